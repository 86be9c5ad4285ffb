"""Evaluating a run: its task evaluates itself through the run's engine; this writes what it returns.

`evaluate(run, split)` builds the run's decoding engine (multimodal/sampling/engine.py), calls
`task.evaluate(engine, split, limit)` (tasks/base.py: decode then score by default) and, with `write`,
saves under the run's ``eval/`` folder ``<stem>_metrics.json``, ``<stem>_predictions.jsonl`` (one
record per prediction) and the task's other files as ``<stem>_<name>``. The stem is the split, then
the example limit and every sampler setting that differs from the checkpoint's own (``mmdiff eval
--limit 4 --set sampler.steps=4`` writes ``test_limit-4_steps-4_*``), so an evaluation with other
settings never replaces the one training wrote. Any other setting that differs from the checkpoint's
(``--set task.data=...``, outside ``sampler`` and ``train``) adds ``cfg-<digest>`` of the changed
settings, which the metrics list under ``changed_settings``. The metrics also carry the sampler
settings, the wall time and the files written (``outputs``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, is_dataclass
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
    changed = changed_settings(run)
    if changed:
        metrics["changed_settings"] = changed
    if not write:
        return metrics
    out_dir = run.folder / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(run, split, limit)
    files = {f"{stem}_{name}": text for name, text in result.files.items()}
    if result.records:
        files[f"{stem}_predictions.jsonl"] = "".join(json.dumps(record) + "\n" for record in result.records)
    metrics["outputs"] = sorted(files) + [f"{stem}_metrics.json"]
    for name, text in files.items():
        (out_dir / name).write_text(text)
    (out_dir / f"{stem}_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def output_stem(run: Run, split: str, limit: int | None) -> str:
    """The split, then the limit and the sampler settings that differ from the checkpoint's (module docstring)."""
    parts = [split]
    if limit is not None and limit != run.config.train.eval_limit:
        parts.append(f"limit-{limit}")
    saved = vars(run.saved_sampler) if run.saved_sampler is not None else {}
    for key, value in vars(run.config.sampler).items():
        if saved and saved.get(key) != value:
            parts.append(f"{key}-{value}".replace("/", "-").replace(" ", ""))
    changed = changed_settings(run)
    if changed:
        parts.append("cfg-" + hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8])
    return "_".join(parts)


def changed_settings(run: Run) -> dict[str, Any]:
    """Dotted settings outside ``sampler`` and ``train`` that differ from the checkpoint's config."""
    if run.saved_config is None:
        return {}
    now, saved = _flat(run.config), _flat(run.saved_config)
    keys = sorted(set(now) | set(saved))
    return {k: now.get(k) for k in keys if not k.startswith(("sampler.", "train.")) and now.get(k) != saved.get(k)}


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    items = asdict(config) if is_dataclass(config) else config
    out = {}
    for key, value in items.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))
    return out
