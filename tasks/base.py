"""The `Task` interface and the LLaDA SFT collation shared by every task.

A task yields examples per split, lays each out as prompt text + answer text (+ modality items),
scores predictions, and evaluates itself through a decoding `Engine` (`evaluate`: decode then score
by default). Collation follows LLaDA's SFT recipe (PAPERS.md section 1):
each row is prompt + answer + EOS, padded with EOS to the batch's longest row; everything after the
prompt, EOS padding included, is maskable, which is how the model learns to stop. Prompts are never
masked. For generation, prompts are left-padded (padding hidden from attention) and the answer
canvas is appended by the sampler.

Tasks import `multimodal.registry` besides the types and sampling that DESIGN.md lists: it is a
dependency-free utility, and a second copy of it in `tasks/` would drift.

Tasks receive the tokenizer as an argument (any object with encode / decode / mask_id / eos_id /
pad_id, see `multimodal.types.Tokenizer`), so this package depends on no tokenizer implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from multimodal.collate import expand_placeholders, stack_items
from multimodal.registry import new_registry
from multimodal.types import ModalityIO, MultimodalBatch, PromptBatch, SampleOutput, Tokenizer
from tasks.evaluation import Evaluation, decode_layouts, prediction_records

if TYPE_CHECKING:
    from multimodal.sampling.engine import Engine

TASKS = new_registry("task", "task")


@dataclass
class TaskConfig:
    """Base task settings; each task subclasses it with its own fields.

    Attributes:
        name: registered task name.
        seed: seed of any generated data.
        answer_length: None pads answers with EOS to the batch's longest row (LLaDA SFT); an integer
            pads every answer with EOS to exactly that many tokens after a left-padded prompt, the
            layout the sampler decodes (set it to the decoding gen_length).
        chat: render prompts through the tokenizer's chat template (a Hugging Face tokenizer: the
            folder's template, else LLaDA-Instruct's, multimodal/chat.py), as released instruct
            models were trained: `system` first, earlier turns as user / assistant messages (given,
            not maskable), the prompt as the last user turn, the assistant header, then the layout's
            `prompt_suffix`; answers end with the end-of-turn token before the EOS padding.
        system: the system message in chat mode (None: none).
    """

    name: str = "digits"
    seed: int = 0
    answer_length: int | None = None
    chat: bool = False
    system: str | None = None


@dataclass(frozen=True)
class Layout:
    """One example laid out for the model.

    Attributes:
        prompt: the final user turn (modality placeholders such as ``<image>`` included).
        answer: its reference answer.
        meta: id, question type, references for the metrics.
        history: earlier (prompt, answer) turns of a multi-turn conversation; their answers are
            maskable in training and given as context in generation.
        media: modality -> raw items (images, waveforms, ...), one per placeholder, in order.
        prompt_suffix: text after the prompt; in chat mode after the rendered prompt and its assistant
            header (Whisper-LLaDA puts the audio there).
    """

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    history: tuple[tuple[str, str], ...] = ()
    media: dict[str, list[Any]] = field(default_factory=dict)
    prompt_suffix: str = ""


class Task:
    """Base class; subclasses set `Config` and implement `examples`, `layout` and `metrics`."""

    Config = TaskConfig
    splits: tuple[str, ...] = ("train", "validation", "test")

    def __init__(self, config: TaskConfig):
        self.config = config

    def examples(self, split: str) -> Sequence[dict[str, Any]]:
        raise NotImplementedError

    def layout(self, example: dict[str, Any]) -> Layout:
        raise NotImplementedError

    def metrics(self, predictions: Sequence[str], layouts: Sequence[Layout]) -> dict[str, float]:
        raise NotImplementedError

    def train_layouts(self) -> list[Layout]:
        """Training examples laid out (tasks may expand or subsample, e.g. one layout per turn)."""
        return [self.layout(ex) for ex in self.examples("train")]

    def eval_layouts(self, split: str) -> list[Layout]:
        """Evaluation examples laid out, one per scored answer."""
        return [self.layout(ex) for ex in self.examples(split)]

    def prediction_details(self, predictions: Sequence[str], layouts: Sequence[Layout]) -> list[dict[str, Any]]:
        """Per-prediction extras written next to each prediction (alignments, ...); none by default."""
        return [{} for _ in predictions]

    def evaluate(self, engine: Engine, split: str = "test", limit: int | None = None) -> Evaluation:
        """Decode the split's prompts with the engine's sampler and score them (tasks/evaluation.py).

        Tasks that decode another way (infilling proteins) or score more (a speech tower's own CTC
        transcripts) override this.
        """
        return self.decode_and_score(engine, split, limit)

    def decode_and_score(
        self,
        engine: Engine,
        split: str,
        limit: int | None = None,
        on_batch: Callable[[SampleOutput, Sequence[Layout]], None] | None = None,
    ) -> Evaluation:
        """The default evaluation: metrics of the decoded answers, then decoding's costs; one record each."""
        layouts = self.eval_layouts(split)[: limit or None]
        decoded = decode_layouts(self, engine, layouts, f"decoding {split}", on_batch)
        metrics: dict[str, Any] = dict(self.metrics(decoded.predictions, layouts))
        metrics.update({"split": split, "examples": len(layouts), **decoded.stats()})
        details = self.prediction_details(decoded.predictions, layouts)
        return Evaluation(metrics, prediction_records(layouts, decoded.predictions, details))

    def layout_for_prompt(self, prompt: str, media: Mapping[str, str | Path | bytes] | None = None) -> Layout:
        """A layout for a prompt typed by a user (`mmdiff sample`, the server, a harness). `media` maps a
        modality (``image``, ``audio``, ...) to one item, a file path or the file's bytes, checked here (a
        bad one raises ValueError naming it); a task refuses the modalities it does not take."""
        self.refuse_media(media, ())
        return Layout(prompt=prompt, answer="")

    def refuse_media(self, media: Mapping[str, Any] | None, takes: tuple[str, ...]) -> None:
        """ValueError naming the media items in `media` of modalities other than `takes`."""
        other = [_plural(k) for k, v in sorted((media or {}).items()) if v is not None and k not in takes]
        if other:
            took = f"takes {' and '.join(map(_plural, takes))}, not" if takes else "takes no"
            raise ValueError(f"task '{self.config.name}' {took} {' or '.join(other)}")

    def texts(self) -> list[str]:
        """Training texts from which a built-in tokenizer learns its vocabulary."""
        out = []
        for ex in self.examples("train"):
            lay = self.layout(ex)
            out += [lay.prompt, lay.answer]
        return out

    # ---- streaming (multimodal/train/streaming.py reads the shards; these two hooks say which and how)

    def train_shards(self) -> list[str] | None:
        """The training split as WebDataset shard paths or URLs, or None when it is not stored as shards
        (then training materialises `train_layouts`)."""
        return None

    def layouts_from_sample(self, sample: dict[str, Any]) -> list[Layout]:
        """Training layouts of one raw WebDataset sample, the ones `train_layouts` gives for its record.

        The sample holds ``__key__``, ``__url__``, ``__epoch__`` and the encoded members (bytes by
        extension). A bad sample raises ValueError (BadRecord, with a ``reason``); an empty list drops
        a sample that the task's own filters leave out.
        """
        raise NotImplementedError(f"task '{self.config.name}' does not stream WebDataset shards")

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"unknown split '{split}' for task '{self.config.name}' (splits: {', '.join(self.splits)})")

    def collate(
        self, layouts: Sequence[Layout], tokenizer: Tokenizer, modalities: dict[str, ModalityIO] | None = None
    ) -> MultimodalBatch:
        """LLaDA SFT batch: (history turns +) prompt + answer + EOS, EOS-padded; answers maskable.

        Modality items are preprocessed and each placeholder is expanded to the adapter's token count.
        """
        contexts, history_answers = [], []
        for lay in layouts:
            if self.config.chat:
                contexts.append(self._chat_context(lay, tokenizer))
                history_answers.append([])
                continue
            ids, spans = [], []
            for prompt, answer in lay.history:
                ids += tokenizer.encode(prompt)
                start = len(ids)
                ids += tokenizer.encode(answer) + [tokenizer.eos_id]
                spans.append((start, len(ids)))
            contexts.append(ids + tokenizer.encode(lay.prompt + lay.prompt_suffix))
            history_answers.append(spans)
        contexts, spans, inputs, masks = expand_media(contexts, history_answers, layouts, modalities or {})
        end_of_turn = [tokenizer.eot_id] if self.config.chat and getattr(tokenizer, "eot_id", None) is not None else []
        batch = sft_collate(
            contexts,
            [tokenizer.encode(x.answer) + end_of_turn for x in layouts],
            tokenizer.eos_id,
            meta=[x.meta for x in layouts],
            answer_length=self.config.answer_length,
            pad_id=tokenizer.pad_id,
            context_answers=spans,
        )
        return replace(batch, modality_inputs=inputs, modality_masks=masks)

    def prompt_batch(
        self, layouts: Sequence[Layout], tokenizer: Tokenizer, modalities: dict[str, ModalityIO] | None = None
    ) -> PromptBatch:
        """Prompts for generation: history turns with their answers, then the final prompt."""
        contexts = []
        for lay in layouts:
            if self.config.chat:
                contexts.append(self._chat_context(lay, tokenizer))
                continue
            ids = []
            for prompt, answer in lay.history:
                ids += tokenizer.encode(prompt) + tokenizer.encode(answer) + [tokenizer.eos_id]
            contexts.append(ids + tokenizer.encode(lay.prompt + lay.prompt_suffix))
        contexts, _, inputs, masks = expand_media(contexts, [[] for _ in layouts], layouts, modalities or {})
        return PromptBatch(contexts, inputs, masks)

    def _chat_context(self, lay: Layout, tokenizer: Tokenizer) -> list[int]:
        """Chat mode (TaskConfig.chat): the rendered conversation, then the layout's suffix."""
        encode_chat = getattr(tokenizer, "chat_encode", None)
        if encode_chat is None:
            raise ValueError(
                "task.chat needs a Hugging Face tokenizer (tokenizer.kind: hf), whose chat template it uses"
            )
        messages = [{"role": "system", "content": self.config.system}] if self.config.system else []
        for prompt, answer in lay.history:
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": lay.prompt})
        return encode_chat(messages) + (tokenizer.encode(lay.prompt_suffix) if lay.prompt_suffix else [])


def expand_media(
    contexts: list[list[int]],
    spans: list[list[tuple[int, int]]],
    layouts: Sequence[Layout],
    modalities: dict[str, ModalityIO],
) -> tuple[list[list[int]], list[list[tuple[int, int]]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Expand each placeholder into as many copies as its item gives embeddings, and stack the items.

    Returns the new token lists, the history answer spans shifted accordingly, modality inputs
    (B, K, ...) (items of different shapes zero-padded to the largest) and item masks (B, K). A row
    whose placeholder count differs from its item count is an error naming the example.
    """
    inputs: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for name, io in modalities.items():
        rows = []
        for i, lay in enumerate(layouts):
            items = [io.preprocess(item) for item in lay.media.get(name, [])]
            found = sum(t == io.placeholder_id for t in contexts[i])
            if found != len(items):
                example = lay.meta.get("id", i)
                raise ValueError(f"example {example}: {found} '{name}' placeholders for {len(items)} items")
            contexts[i], shift_at = expand_placeholders(
                contexts[i], io.placeholder_id, [int(io.num_tokens(x)) for x in items]
            )
            spans[i] = [
                (s + sum(e for p, e in shift_at if p < s), end + sum(e for p, e in shift_at if p < s))
                for s, end in spans[i]
            ]
            rows.append(items)
        stacked = stack_items(rows)
        if stacked is not None:
            inputs[name], masks[name] = stacked
    return contexts, spans, inputs, masks


def sft_collate(
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    eos_id: int,
    meta: list[dict[str, Any]] | None = None,
    answer_length: int | None = None,
    pad_id: int = 0,
    context_answers: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> MultimodalBatch:
    """Build an SFT batch from token lists.

    With `answer_length` None: rows are prompt + answer + EOS, EOS-padded on the right to the longest
    row (LLaDA SFT). With an integer: prompts are left-padded (padding hidden from attention, rotary
    positions counted from the first real token) and every answer is EOS-padded to exactly
    `answer_length` tokens, as the sampler lays out its canvas. An answer longer than that is an error.
    Everything after the prompt, EOS padding included, is maskable, and so are the spans listed in
    `context_answers` (earlier answers of a multi-turn conversation, positions inside each prompt).
    """
    meta = meta or [{} for _ in prompts]
    spans = context_answers or [[] for _ in prompts]
    if answer_length is None:
        rows = [list(p) + list(a) + [eos_id] for p, a in zip(prompts, answers, strict=True)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), eos_id, dtype=torch.long)
        maskable = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
            ids[i, : len(row)] = torch.as_tensor(row)
            maskable[i, len(prompt) :] = True
            for start, end in spans[i]:
                maskable[i, start:end] = True
        return MultimodalBatch(input_ids=ids, maskable=maskable, meta=meta)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width + answer_length), eos_id, dtype=torch.long)
    attention = torch.ones_like(ids)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, width:] = True
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        if len(answer) > answer_length:
            example = meta[i].get("id", i)
            raise ValueError(
                f"answer of example {example} has {len(answer)} tokens, more than answer_length {answer_length}"
            )
        pad = width - len(prompt)
        ids[i, :pad] = pad_id
        attention[i, :pad] = 0
        ids[i, pad:width] = torch.as_tensor(list(prompt), dtype=torch.long)
        ids[i, width : width + len(answer)] = torch.as_tensor(list(answer), dtype=torch.long)
        for start, end in spans[i]:
            maskable[i, pad + start : pad + end] = True
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    has_padding = not bool(attention.all())
    return MultimodalBatch(
        input_ids=ids,
        maskable=maskable,
        attention_mask=attention if has_padding else None,
        position_ids=positions if has_padding else None,
        meta=meta,
    )


def shard_list(spec: str | Path) -> list[str]:
    """Shards named by `spec`: brace ranges expanded (``train-{000000..000099}.tar``), then URLs
    (``pipe:...``, ``gs://...``, ``https://...``) kept as they are and local globs resolved, sorted."""
    from braceexpand import braceexpand

    out: list[str] = []
    for item in braceexpand(str(spec)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", item) or not any(c in item for c in "*?["):
            out.append(item)
        else:
            path = Path(item)
            out += sorted(str(p) for p in path.parent.glob(path.name))
    if not out:
        raise FileNotFoundError(f"no shards match {spec}")
    return out


def task_config_class(name: str) -> type[TaskConfig]:
    return TASKS.get(name).Config


def create_task(config: TaskConfig) -> Task:
    return TASKS.get(config.name)(config)


def list_tasks(pattern: str = "*") -> list[str]:
    return TASKS.names(pattern)


def source_name(item: str | Path | bytes) -> str:
    """How a typed prompt's media item is named in errors: its file, or ``upload`` for bytes."""
    return "upload" if isinstance(item, bytes) else str(item)


def _plural(modality: str) -> str:
    """``images``, ``audio``, ``videos``: a modality's items, for messages."""
    return modality if modality == "audio" else f"{modality}s"
