"""Evaluating a run: its task evaluates itself through the run's engine; this writes what it returns.

`evaluate(run, split)` builds the run's decoding engine (multimodal/sampling/engine.py), calls
`task.evaluate(engine, split, limit)` (tasks/base.py: decode then score by default) and, with `write`,
saves under the run's ``eval/`` folder ``<split>_metrics.json``, ``<split>_predictions.jsonl`` (one
record per prediction) and the task's other files as ``<split>_<name>``. The metrics also carry the
sampler settings and the wall time.
"""

from __future__ import annotations

import json
import time
from typing import Any

from multimodal.train.build import Run


def evaluate(
    run: Run, split: str = "test", limit: int | None = None, batch_size: int | None = None, write: bool = True
) -> dict[str, Any]:
    """Evaluate the run on `split` (at most `limit` examples); returns the metrics (and writes them with `write`)."""
    run.task.check_split(split)
    engine = run.engine(batch_size)
    start = time.perf_counter()
    result = run.task.evaluate(engine, split, limit)
    metrics = dict(result.metrics)
    metrics.setdefault("seconds", round(time.perf_counter() - start, 2))
    metrics["sampler"] = dict(vars(run.config.sampler))
    if not write:
        return metrics
    out_dir = run.folder / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    if result.records:
        with (out_dir / f"{split}_predictions.jsonl").open("w") as f:
            for record in result.records:
                f.write(json.dumps(record) + "\n")
    for name, text in result.files.items():
        (out_dir / f"{split}_{name}").write_text(text)
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
