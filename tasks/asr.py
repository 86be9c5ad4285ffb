"""Speech recognition with an audio-conditioned diffusion LM (Whisper-LLaDA / DIFFA layouts).

Data: the embedded spoken corpus (tasks/synthetic/spoken.py, written as shards on first use), a
LibriSpeech-style folder, a JSON-lines manifest or WebDataset shards, all read into the same
records (tasks/asr_data.py). Layouts (PAPERS.md section 4):

* ``audio_after_prompt`` (Whisper-LLaDA): "Transcribe the audio:" followed by the audio embeddings;
  with ``chat: true`` the prompt is the user turn of the chat template and the audio follows the
  assistant header, as the release lays it out;
* ``audio_in_instruction`` (DIFFA): "This is the audio: <audio>. {instruction}", the embeddings at the
  placeholder; with ``chat: true`` and ``system: "You are a helpful voice assistant."`` it is DIFFA's
  prompt; with a placeholder named otherwise (``placeholder``) the embeddings follow "This is the
  audio:" and the literal text " <audio>." stays after them, as the release lays it out.

The answer is the transcript (lower-case words). Metrics: corpus WER after Whisper's English
normalisation with substitutions / deletions / insertions, also for the held-out-voice and seen-voice
parts of the embedded test split; each prediction is written with its alignment. The embedded corpus
has a fourth split, ``test_accents``: the test sentences read by voices with accents never heard in
training (tasks/synthetic/spoken.py), and on request (``extra_splits``) two built from pinned real assets:
``test_piper``, the test sentences read by a neural Piper voice unlike any eSpeak voice
(tasks/synthetic/spoken_piper.py), and ``real``, recorded human speech with transcripts
(tasks/real/speech_recordings.py), a sanity set whose words mostly lie outside the corpus vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from multimodal.types import SampleOutput
from tasks.asr_ctc import ctc_transcripts
from tasks.asr_data import read_librispeech, read_manifest, read_speech_shards, record_from_sample, validate
from tasks.asr_metrics import wer_report
from tasks.base import TASKS, Layout, Task, TaskConfig, shard_list, source_name
from tasks.evaluation import Evaluation
from tasks.records import ReadStats

if TYPE_CHECKING:
    from multimodal.sampling.engine import Engine

log = logging.getLogger(__name__)
AUDIO_TOKEN = "<audio>"


@dataclass
class ASRConfig(TaskConfig):
    """Settings of the ASR task.

    Attributes:
        data: ``embedded``, a LibriSpeech-style folder, a folder of shards ``<split>-*.tar``, or a
            ``.jsonl`` manifest (then `files` names one per split).
        files: split -> manifest, LibriSpeech folder or shard glob, overriding `data`.
        data_dir: where the embedded corpus is written (once per configuration).
        spoken: overrides of the corpus generator (SpokenConfig fields).
        extra_splits: evaluation splits of the embedded corpus built from pinned assets on first use:
            ``test_piper`` and / or ``real`` (module docstring).
        layout: ``audio_after_prompt`` (Whisper-LLaDA) or ``audio_in_instruction`` (DIFFA).
        prompt: the instruction text.
        placeholder: the token written where the audio embeddings go (``modalities.audio.placeholder``
            must be the same). DIFFA's release splices its embeddings right after "This is the audio:"
            and keeps the literal text " <audio>." after them: with a placeholder of another name
            (e.g. ``<|audio_embeds|>``, and an HF tokenizer) ``audio_in_instruction`` writes exactly that.
        bad_records: ``skip`` (count and drop) or ``fail``.
        max_examples: cap per split.
    """

    name: str = "asr"
    data: str = "embedded"
    files: dict[str, str] = field(default_factory=dict)
    data_dir: str = "data/spoken"
    spoken: dict[str, Any] = field(default_factory=dict)
    extra_splits: list[str] = field(default_factory=list)
    layout: Literal["audio_after_prompt", "audio_in_instruction"] = "audio_after_prompt"
    prompt: str = "Transcribe the audio:"
    placeholder: str = AUDIO_TOKEN
    bad_records: Literal["skip", "fail"] = "skip"
    max_examples: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.extra_splits) - set(EXTRA_SPLITS))
        if unknown:
            raise ValueError(f"task.extra_splits: unknown split(s) {unknown}; known: {', '.join(EXTRA_SPLITS)}")
        if self.extra_splits and self.data != "embedded":
            raise ValueError("task.extra_splits are built beside the embedded corpus: set task.data to 'embedded'")


EXTRA_SPLITS = ("test_piper", "real")


def extra_split(corpus: Path, split: str) -> list[Path]:
    """The shards of an extra split (``test_piper``, ``real``), built beside the corpus on first use."""
    if not sorted(corpus.glob(f"{split}-*.tar")):
        if split == "test_piper":
            from tasks.synthetic.spoken_piper import write_piper_split

            log.info("reading the test sentences with the Piper voice into %s (a few minutes)", corpus)
            write_piper_split(corpus)
        else:
            from tasks.real.speech_recordings import write_real_split

            write_real_split(corpus)
    return sorted(corpus.glob(f"{split}-*.tar"))


def embedded_corpus(cfg: ASRConfig) -> Path:
    """The spoken corpus for this configuration, written under data_dir/<hash> on first use."""
    from tasks.synthetic.spoken import SpokenConfig, write_spoken_corpus

    spoken = SpokenConfig(seed=cfg.seed, **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.spoken.items()})
    digest = hashlib.sha1(json.dumps(asdict(spoken), sort_keys=True, default=list).encode()).hexdigest()[:10]
    folder = Path(cfg.data_dir) / digest
    if not (folder / "manifest.json").is_file():
        log.info("synthesising the embedded spoken corpus to %s (about a minute per 5,000 utterances)", folder)
        write_spoken_corpus(folder, spoken, progress=True)
    return folder


@TASKS.register("asr")
class ASRTask(Task):
    Config = ASRConfig

    @property
    def splits(self) -> tuple[str, ...]:
        """``test_accents`` exists in the embedded corpus (unless it has no accent voices) or where
        `files` names it; other data have the three usual splits."""
        cfg = self.config
        embedded_accents = cfg.data == "embedded" and bool(cfg.spoken.get("accent_voices", True))
        accents = "test_accents" in cfg.files or embedded_accents
        return ("train", "validation", "test") + (("test_accents",) if accents else ()) + tuple(cfg.extra_splits)

    def __init__(self, config: ASRConfig):
        super().__init__(config)
        self._records: dict[str, list[dict[str, Any]]] = {}
        self.stats: dict[str, ReadStats] = {}

    def _read(self, split: str) -> tuple[list[dict[str, Any]], ReadStats]:
        cfg = self.config
        shards = self._shards(split)
        if shards is not None:
            return read_speech_shards(shards, cfg.bad_records)
        path = Path(cfg.files.get(split) or cfg.data)
        if path.suffix == ".jsonl":
            return read_manifest(path, cfg.bad_records)
        return read_librispeech(path, cfg.bad_records)

    def _shards(self, split: str) -> list[Path] | None:
        """The split's shards, or None when it is a manifest or a LibriSpeech folder."""
        cfg = self.config
        spec = cfg.files.get(split)
        if spec is None and cfg.data == "embedded":
            if split in cfg.extra_splits:
                return extra_split(embedded_corpus(cfg), split)
            return sorted(embedded_corpus(cfg).glob(f"{split}-*.tar"))
        path = Path(spec or cfg.data)
        if path.suffix == ".jsonl" or (path.is_dir() and any(path.glob("*/*/*.trans.txt"))):
            return None
        shards = sorted(path.glob(f"{split}-*.tar")) if path.is_dir() else sorted(path.parent.glob(path.name))
        if not shards:
            raise FileNotFoundError(f"no speech data for split '{split}' at {path}")
        return shards

    # ---- streaming (multimodal/train/streaming.py)

    def train_shards(self) -> list[str] | None:
        spec = self.config.files.get("train")
        if spec is not None and ".tar" in spec:
            return shard_list(spec)  # URLs and brace ranges as well as local globs
        shards = self._shards("train")
        return None if shards is None else [str(p) for p in shards]

    def layouts_from_sample(self, sample: dict[str, Any]) -> list[Layout]:
        """The layout of one shard sample, validated as `read_speech_shards` validates it."""
        return [self.layout(validate(record_from_sample(sample)))]

    def examples(self, split: str) -> Sequence[dict[str, Any]]:
        self.check_split(split)
        if split not in self._records:
            records, stats = self._read(split)
            self._records[split], self.stats[split] = records[: self.config.max_examples or None], stats
        return self._records[split]

    def prompt_parts(self) -> tuple[str, str]:
        """(prompt, suffix): the audio placeholder goes inside the instruction (DIFFA) or after it."""
        ph = self.config.placeholder
        if self.config.layout == "audio_in_instruction":
            if ph == AUDIO_TOKEN:  # the embeddings stand in for the literal "<audio>"
                return f"This is the audio: {ph}. {self.config.prompt}", ""
            return f"This is the audio:{ph} {AUDIO_TOKEN}. {self.config.prompt}", ""  # the release, exactly
        return self.config.prompt, f" {ph}"

    def prompt_text(self) -> str:
        return "".join(self.prompt_parts())

    def layout(self, example: dict[str, Any]) -> Layout:
        meta = {
            "id": example["id"],
            "held_out_voice": bool(example.get("held_out_voice", False)),
            "duration_s": float(example.get("duration_s", 0.0)),
        }
        if example.get("voice"):
            meta["voice"] = str(example["voice"])
        prompt, suffix = self.prompt_parts()
        media = {"audio": [example["audio"]]}
        return Layout(prompt=prompt, answer=example["text"], meta=meta, media=media, prompt_suffix=suffix)

    def layout_for_prompt(self, prompt: str, media: Mapping[str, str | Path | bytes] | None = None) -> Layout:
        self.refuse_media(media, ("audio",))
        audio = (media or {}).get("audio")
        if audio is None:
            raise ValueError("the asr task needs audio")
        if not isinstance(audio, bytes):
            if not Path(audio).is_file():
                raise FileNotFoundError(f"audio file not found: {audio}")
            audio = Path(audio)
        validate({"id": source_name(audio), "text": "?", "audio": audio})  # unreadable or empty audio: one error
        if self.config.placeholder in prompt:
            return Layout(prompt=prompt, answer="", media={"audio": [audio]})
        text, suffix = self.prompt_parts()
        return Layout(prompt=text, answer="", media={"audio": [audio]}, prompt_suffix=suffix)

    def texts(self) -> list[str]:
        return [self.prompt_text()] + [r["text"] for r in self.examples("train")]

    def metrics(self, predictions: Sequence[str], layouts: Sequence[Layout]) -> dict[str, Any]:
        ids = [lay.meta.get("id") for lay in layouts]
        report = wer_report(predictions, [lay.answer for lay in layouts], ids)
        out: dict[str, Any] = {k: report[k] for k in ("wer", "S", "D", "I", "N", "num_utterances")}

        def subset(rows: list[int]) -> float:
            return wer_report([predictions[i] for i in rows], [layouts[i].answer for i in rows])["wer"]

        for name, keep in (("held_out_voice", True), ("seen_voice", False)):
            rows = [i for i, lay in enumerate(layouts) if lay.meta.get("held_out_voice", False) == keep]
            if rows and len(rows) < len(layouts):
                out[f"wer/{name}"], out[f"n/{name}"] = subset(rows), len(rows)
        # each held-out voice apart: one unseen accent can be much harder than another
        held_out = sorted({lay.meta.get("voice") for lay in layouts if lay.meta.get("held_out_voice")} - {None})
        for voice in held_out if len(held_out) > 1 else ():
            rows = [i for i, lay in enumerate(layouts) if lay.meta.get("voice") == voice]
            out[f"wer/held_out_voice/{voice}"], out[f"n/held_out_voice/{voice}"] = subset(rows), len(rows)
        audio_seconds = sum(lay.meta.get("duration_s", 0.0) for lay in layouts)
        if audio_seconds:
            out["audio_seconds"] = round(audio_seconds, 2)
        return out

    def evaluate(self, engine: Engine, split: str = "test", limit: int | None = None) -> Evaluation:
        """Decode and score (Task.evaluate); a tower with a CTC head is also scored on its own best-path
        transcripts (``ctc_greedy/*``, and ``ctc_greedy`` in each record): the gap between the two says
        whether the encoder or the backbone limits the WER. Adds the real-time factor of decoding."""
        ctc: list[str] = []

        def transcripts(out: SampleOutput, chunk: Sequence[Layout]) -> None:
            ctc.extend(ctc_transcripts(out, engine.tokenizer, engine.pad_id) or [])

        result = self.decode_and_score(engine, split, limit, on_batch=transcripts)
        metrics, examples = result.metrics, result.metrics["examples"]
        if ctc and len(ctc) == examples:
            layouts = self.eval_layouts(split)[:examples]
            for key, value in self.metrics(ctc, layouts).items():
                if key.startswith("wer") or key in ("S", "D", "I"):
                    metrics[f"ctc_greedy/{key}"] = value
            for record, text in zip(result.records, ctc, strict=True):
                record["ctc_greedy"] = text
        if metrics.get("audio_seconds"):
            metrics["real_time_factor"] = round(metrics["decode_seconds"] / metrics["audio_seconds"], 4)
        return result

    def prediction_details(self, predictions: Sequence[str], layouts: Sequence[Layout]) -> list[dict[str, Any]]:
        report = wer_report(predictions, [lay.answer for lay in layouts], [lay.meta.get("id") for lay in layouts])
        return [{"alignment": u["alignment"], "errors": u["S"] + u["D"] + u["I"]} for u in report["utterances"]]
