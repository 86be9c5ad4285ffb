"""Visual question answering (LLaDA-V style): LLaVA conversations with images, VQA metrics.

Data come from WebDataset shards or a LLaVA-format JSON file (tasks/vqa_data.py), or from the
embedded shapes data set (tasks/synthetic/shapes.py), which is written as shards on first use and
then read through the same shard path. Layouts:

* ``turns: each``: one example per question; with `history` the earlier turns of the conversation
  come first (their answers maskable in training, given in evaluation), without it every question
  stands alone with its image (the shapes questions are independent).
* ``turns: conversation``: one training example per conversation, every answer maskable.
* ``mode: caption``: LLaDA-V stage-1 alignment data; the answer is the image's description (the
  shapes generator's scene objects, listed left to right, each with its place on a 3 x 3 grid); the
  same pairs pre-train the image tower contrastively (`mmdiff pretrain-tower`). ``mode: mixed`` trains on both, one
  caption per image besides its questions (evaluation always asks the questions): the caption is
  dense supervision that teaches a tower trained from scratch every object's attributes at once,
  where a one-word answer teaches one.
* ``text_only: true``: the image is withheld (no placeholder, no features): the control that shows
  answers come from the image.

Metrics (tasks/vqa_metrics.py): VQA soft accuracy with VQAv2 answer normalisation, exact match,
closed yes/no accuracy with every question in the denominator, per question type, plus the
per-type answer prior measured on the training split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.base import TASKS, Layout, Task, TaskConfig, shard_list, source_name
from tasks.records import ReadStats
from tasks.vqa_data import IMAGE_TOKEN, read_llava_json, read_shards, record_from_sample, validate
from tasks.vqa_metrics import vqa_report

log = logging.getLogger(__name__)


@dataclass
class VQAConfig(TaskConfig):
    """Settings of the VQA task.

    Attributes:
        data: ``embedded`` (the shapes data set), a folder of shards ``<split>-*.tar``, or a LLaVA
            JSON file per split given in `files`.
        files: split -> LLaVA JSON file or shard glob, overriding `data` for that split.
        image_root: folder that LLaVA JSON image paths are relative to (default: the JSON's folder).
        data_dir: where the embedded data set is written (generated once per configuration).
        shapes: overrides of the shapes generator settings (ShapesConfig fields).
        turns, history, mode, text_only: layout choices (module docstring).
        bad_records: ``skip`` (count and drop) or ``fail`` (raise naming the record).
        max_examples: cap per split (None: all).
        vqa_eval: the official VQAv2 script's version for human answers: ``2021`` (current) or ``2016``
            (before March 2021); tasks/vqa_normalise.py.
    """

    name: str = "vqa"
    data: str = "embedded"
    files: dict[str, str] = field(default_factory=dict)
    image_root: str | None = None
    data_dir: str = "data/shapes"
    shapes: dict[str, Any] = field(default_factory=dict)
    turns: Literal["each", "conversation"] = "each"
    history: bool = False
    mode: Literal["qa", "caption", "mixed"] = "qa"
    text_only: bool = False
    bad_records: Literal["skip", "fail"] = "skip"
    max_examples: int | None = None
    vqa_eval: Literal["2021", "2016"] = "2021"


def embedded_dataset(cfg: VQAConfig) -> Path:
    """The shapes data set for this configuration, written under data_dir/<hash> on first use."""
    from tasks.synthetic.shapes import ShapesConfig, write_shapes_dataset

    shapes = ShapesConfig(seed=cfg.seed, **cfg.shapes)
    digest = hashlib.sha1(json.dumps(asdict(shapes), sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cfg.data_dir) / digest
    if not (folder / "manifest.json").is_file():
        log.info("writing the embedded shapes data set to %s", folder)
        write_shapes_dataset(folder, shapes)
    return folder


def region(obj: dict[str, Any]) -> str:
    """Where an object's centre lies on a 3 x 3 grid of the image: ``top left`` ... ``bottom right``."""
    column = ("left", "centre", "right")[min(int(obj.get("x", 0.5) * 3), 2)]
    row = ("top", "middle", "bottom")[min(int(obj.get("y", 0.5) * 3), 2)]
    return f"{row} {column}"


def caption(scene: dict[str, Any]) -> str:
    """A description of a shapes scene, objects left to right, each with its place on a 3 x 3 grid:
    "large red circle top left, small blue star bottom right"."""
    objects = sorted(scene.get("objects", []), key=lambda o: o.get("x", 0.0))
    return ", ".join(f"{o['size']} {o['colour']} {o['shape']} {region(o)}" for o in objects) or "nothing"


@TASKS.register("vqa")
class VQATask(Task):
    Config = VQAConfig

    def __init__(self, config: VQAConfig):
        super().__init__(config)
        self._records: dict[str, list[dict[str, Any]]] = {}
        self.stats: dict[str, ReadStats] = {}

    def _source(self, split: str) -> list[Path] | Path:
        cfg = self.config
        spec = cfg.files.get(split)
        if spec is None:
            folder = embedded_dataset(cfg) if cfg.data == "embedded" else Path(cfg.data)
            if folder.is_file():
                return folder
            shards = sorted(folder.glob(f"{split}-*.tar"))
            if not shards:
                raise FileNotFoundError(f"no shards {split}-*.tar in {folder}")
            return shards
        path = Path(spec)
        return path if path.suffix == ".json" else sorted(path.parent.glob(path.name))

    def examples(self, split: str) -> Sequence[dict[str, Any]]:
        self.check_split(split)
        if split not in self._records:
            source = self._source(split)
            if isinstance(source, Path):
                records, stats = read_llava_json(source, self.config.image_root, self.config.bad_records)
            else:
                records, stats = read_shards(source, self.config.bad_records)
            self._records[split], self.stats[split] = records[: self.config.max_examples or None], stats
        return self._records[split]

    def _turns(self, record: dict[str, Any], mode: str) -> list[tuple[str, str]]:
        turns = record["conversations"]
        pairs = [(q["value"], a["value"]) for q, a in zip(turns[0::2], turns[1::2], strict=False)]
        described = (f"{IMAGE_TOKEN}\nDescribe the image.", caption(record.get("scene", {})))
        if mode == "caption":
            return [described]
        return pairs + [described] if mode == "mixed" else pairs

    def _layout(self, record: dict[str, Any], i: int, pairs: list[tuple[str, str]], with_history: bool) -> Layout:
        question, answer = pairs[i]
        history = tuple(pairs[:i]) if with_history else ()
        images = list(record.get("images", []))
        if not with_history and IMAGE_TOKEN not in question and images:
            question = f"{IMAGE_TOKEN}\n{question}"  # a standalone question needs its image
        if not with_history and i > 0:
            images = images[: question.count(IMAGE_TOKEN)]
        types = list(record.get("question_types") or [])
        qtype = types[i] if i < len(types) else ("caption" if answer == caption(record.get("scene", {})) else "all")
        meta = {"id": f"{record['id']}#{i}", "question_type": qtype, "turn": i}
        if self.config.text_only:
            question = question.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "")
            history = tuple((q.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, ""), a) for q, a in history)
            images = []
        return Layout(prompt=question, answer=answer, meta=meta, history=history, media={"image": images})

    def layouts(self, split: str, turns: str, mode: str | None = None) -> list[Layout]:
        return [lay for record in self.examples(split) for lay in self._record_layouts(record, turns, mode)]

    def _record_layouts(self, record: dict[str, Any], turns: str, mode: str | None = None) -> list[Layout]:
        pairs = self._turns(record, mode or self.config.mode)
        if turns == "conversation":
            return [self._layout(record, len(pairs) - 1, pairs, with_history=True)]
        return [self._layout(record, i, pairs, self.config.history) for i in range(len(pairs))]

    def train_layouts(self) -> list[Layout]:
        return self.layouts("train", self.config.turns)

    def eval_layouts(self, split: str) -> list[Layout]:
        return self.layouts(split, "each", "qa" if self.config.mode == "mixed" else None)

    def layout(self, example: dict[str, Any]) -> Layout:
        return self._layout(example, 0, self._turns(example, self.config.mode), False)

    # ---- streaming (multimodal/train/streaming.py)

    def train_shards(self) -> list[str] | None:
        spec = self.config.files.get("train")
        if spec is not None:
            return None if spec.endswith(".json") else shard_list(spec)
        source = self._source("train")
        return None if isinstance(source, Path) else [str(p) for p in source]

    def layouts_from_sample(self, sample: dict[str, Any]) -> list[Layout]:
        """The `train_layouts` of one shard sample, validated as `read_shards` validates it."""
        return self._record_layouts(validate(record_from_sample(sample)), self.config.turns)

    def layout_for_prompt(self, prompt: str, media: Mapping[str, str | Path | bytes] | None = None) -> Layout:
        self.refuse_media(media, ("image",))
        image = (media or {}).get("image")
        if image is None:
            raise ValueError("the vqa task needs an image")
        if not isinstance(image, bytes):
            if not Path(image).is_file():
                raise FileNotFoundError(f"image not found: {image}")
            image = Path(image)
        # an unreadable image is one error naming it, here rather than in the model
        validate({"id": source_name(image), "conversations": _one_turn(IMAGE_TOKEN), "images": [image]})
        question = prompt if IMAGE_TOKEN in prompt else f"{IMAGE_TOKEN}\n{prompt}"
        return Layout(prompt=question, answer="", media={"image": [image]})

    def texts(self) -> list[str]:
        """Questions, answers and captions whatever the mode, so caption (stage 1) and question
        (stage 2) runs share one vocabulary and a checkpoint carries over."""
        layouts = self.layouts("train", "conversation" if self.config.turns == "conversation" else "each", "mixed")
        return [t for lay in layouts for t in (lay.prompt, lay.answer, *sum(lay.history, ()))]

    def metrics(self, predictions: Sequence[str], layouts: Sequence[Layout]) -> dict[str, Any]:
        types = [lay.meta.get("question_type", "all") for lay in layouts]
        report = vqa_report(predictions, [lay.answer for lay in layouts], types, self.config.vqa_eval)
        prior = self.answer_prior(layouts)
        out: dict[str, Any] = {
            "accuracy": report["accuracy"],
            "exact_match": report["exact_match"],
            "closed_accuracy": report["closed_accuracy"],
            "answer_prior": prior["overall"],
        }
        for qtype, row in report.get("per_type", {}).items():
            out[f"accuracy/{qtype}"] = row["accuracy"]
            out[f"prior/{qtype}"] = prior.get(qtype, 0.0)
            out[f"n/{qtype}"] = row["n"]
        return out

    def answer_prior(self, layouts: Sequence[Layout]) -> dict[str, float]:
        """Accuracy of always giving each question type's most frequent training answer."""
        counts: dict[str, Counter] = {}
        for lay in self.layouts("train", "each", "qa"):
            counts.setdefault(lay.meta["question_type"], Counter())[lay.answer] += 1
        best = {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in counts.items()}
        hits, totals = Counter(), Counter()
        for lay in layouts:
            t = lay.meta.get("question_type", "all")
            totals[t] += 1
            hits[t] += best.get(t) == lay.answer
        out = {t: hits[t] / totals[t] for t in totals}
        out["overall"] = sum(hits.values()) / max(sum(totals.values()), 1)
        return out


def _one_turn(question: str) -> list[dict[str, str]]:
    """A question with a placeholder answer, so a typed prompt's image goes through the records' checks."""
    return [{"from": "human", "value": question}, {"from": "gpt", "value": "?"}]
