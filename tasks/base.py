"""The `Task` interface and the LLaDA SFT collation shared by every task.

A task yields examples per split, lays each out as prompt text + answer text (+ modality inputs in
later tasks), and scores predictions. Collation follows LLaDA's SFT recipe (PAPERS.md section 1):
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from multimodal.registry import new_registry
from multimodal.types import MultimodalBatch, Tokenizer

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
    """

    name: str = "digits"
    seed: int = 0
    answer_length: int | None = None


@dataclass(frozen=True)
class Layout:
    """One example laid out for the model: the prompt, the reference answer and metadata."""

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


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

    def texts(self) -> list[str]:
        """Training texts from which a built-in tokenizer learns its vocabulary."""
        out = []
        for ex in self.examples("train"):
            lay = self.layout(ex)
            out += [lay.prompt, lay.answer]
        return out

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"unknown split '{split}' for task '{self.config.name}' (splits: {', '.join(self.splits)})")

    def collate(self, layouts: Sequence[Layout], tokenizer: Tokenizer) -> MultimodalBatch:
        """LLaDA SFT batch: prompt + answer + EOS, EOS-padded; maskable = everything after the prompt."""
        return sft_collate(
            [tokenizer.encode(x.prompt) for x in layouts],
            [tokenizer.encode(x.answer) for x in layouts],
            tokenizer.eos_id,
            meta=[x.meta for x in layouts],
            answer_length=self.config.answer_length,
            pad_id=tokenizer.pad_id,
        )


def sft_collate(
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    eos_id: int,
    meta: list[dict[str, Any]] | None = None,
    answer_length: int | None = None,
    pad_id: int = 0,
) -> MultimodalBatch:
    """Build an SFT batch from token lists.

    With `answer_length` None: rows are prompt + answer + EOS, EOS-padded on the right to the longest
    row (LLaDA SFT). With an integer: prompts are left-padded (padding hidden from attention, rotary
    positions counted from the first real token) and every answer is EOS-padded to exactly
    `answer_length` tokens, as the sampler lays out its canvas. An answer longer than that is an error.
    Everything after the prompt, EOS padding included, is maskable.
    """
    meta = meta or [{} for _ in prompts]
    if answer_length is None:
        rows = [list(p) + list(a) + [eos_id] for p, a in zip(prompts, answers, strict=True)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), eos_id, dtype=torch.long)
        maskable = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
            ids[i, : len(row)] = torch.as_tensor(row)
            maskable[i, len(prompt) :] = True
        return MultimodalBatch(input_ids=ids, maskable=maskable, meta=meta)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width + answer_length), eos_id, dtype=torch.long)
    attention = torch.ones_like(ids)
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        if len(answer) > answer_length:
            raise ValueError(
                f"answer of example {meta[i].get('id', i)} has {len(answer)} tokens, "
                f"more than answer_length {answer_length}"
            )
        pad = width - len(prompt)
        ids[i, :pad] = pad_id
        attention[i, :pad] = 0
        ids[i, pad:width] = torch.as_tensor(list(prompt), dtype=torch.long)
        ids[i, width : width + len(answer)] = torch.as_tensor(list(answer), dtype=torch.long)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, width:] = True
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    has_padding = not bool(attention.all())
    return MultimodalBatch(
        input_ids=ids,
        maskable=maskable,
        attention_mask=attention if has_padding else None,
        position_ids=positions if has_padding else None,
        meta=meta,
    )


def task_config_class(name: str) -> type[TaskConfig]:
    return TASKS.get(name).Config


def create_task(config: TaskConfig) -> Task:
    return TASKS.get(config.name)(config)


def list_tasks(pattern: str = "*") -> list[str]:
    return TASKS.names(pattern)
