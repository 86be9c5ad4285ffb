"""What a task's evaluation returns, and the decode-then-score loop behind `Task.evaluate`.

`Task.evaluate(engine, split, limit)` returns an `Evaluation`: the metrics, one record per prediction
(written as JSON lines) and any other files the task produces (generated FASTA, ...) as text. Where
they are written and under which names is the caller's business (multimodal/train/evaluate.py), so a
task does no file I/O and knows nothing of run folders.

Most tasks decode answers to prompts and score them: `decode_layouts` runs the engine over the
layouts in batches of the engine's batch size with one generator seeded by the engine, so an
evaluation repeats exactly, and counts the work (forward passes, the steps each sample needed,
tokens per second).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from multimodal.types import SampleOutput


@dataclass
class Evaluation:
    """Attributes: metrics (JSON-serialisable), records (one dict per prediction), files (name -> text)."""

    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class Decoded:
    """Answers decoded for a list of layouts, and what decoding them cost."""

    predictions: list[str] = field(default_factory=list)
    nfe: int = 0
    tokens: int = 0
    sample_steps: int = 0
    seconds: float = 0.0

    def add(self, out: SampleOutput) -> None:
        self.nfe += out.nfe
        self.tokens += out.generated.numel()
        # the steps each sample needed (its last commit): a batch runs as long as its slowest row
        self.sample_steps += int((out.commit_step.max(1).values + 1).clamp(min=0).sum())

    def stats(self) -> dict[str, Any]:
        n = max(len(self.predictions), 1)
        return {
            "nfe": self.nfe,
            "steps_per_sample": round(self.sample_steps / n, 2),
            "decode_seconds": round(self.seconds, 3),
            "canvas_tokens_per_second": round(self.tokens / max(self.seconds, 1e-9), 1),
        }


def decode_layouts(
    task: Any,
    engine: Any,
    layouts: Sequence[Any],
    desc: str = "decoding",
    on_batch: Callable[[SampleOutput, Sequence[Any]], None] | None = None,
) -> Decoded:
    """Answers of `layouts` decoded with the engine's sampler; `on_batch(out, chunk)` sees each batch's output."""
    decoded, generator, start = Decoded(), engine.generator(), time.perf_counter()
    size = engine.batch_size
    for i in tqdm(range(0, len(layouts), size), desc=desc, unit="batch", leave=False):
        chunk = layouts[i : i + size]
        out = engine.generate(task.prompt_batch(chunk, engine.tokenizer, engine.modalities), generator=generator)
        decoded.predictions += engine.texts(out)
        decoded.add(out)
        if on_batch is not None:
            on_batch(out, chunk)
    decoded.seconds = time.perf_counter() - start
    return decoded


def prediction_records(
    layouts: Sequence[Any], predictions: Sequence[str], details: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One record per prediction: id, prompt, prediction, reference, the layout's scalar meta and `details`."""
    rows = []
    for lay, pred, extra in zip(layouts, predictions, details, strict=True):
        row = {"id": lay.meta.get("id"), "prompt": lay.prompt, "prediction": pred, "reference": lay.answer}
        row.update({k: v for k, v in lay.meta.items() if k not in row and isinstance(v, (str, int, float))})
        row.update(extra)
        rows.append(row)
    return rows
