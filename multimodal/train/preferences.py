"""Preference pairs for VRPO: reading them (JSON lines) and building them from a model's own samples.

A pair is one JSON object per line, the common form of preference data sets::

    {"prompt": "...", "chosen": "...", "rejected": "...", "media": {"image": "img/17.png"}, "id": "..."}

``media`` (optional) maps a modality to a file path, relative to the file's folder when not absolute;
the task turns prompt and media into its layout exactly as for a typed prompt (`layout_for_prompt`), so
the pair is scored on the canvas the task trains and decodes. Bad rows are counted by reason and
skipped, never a crash mid-epoch: not JSON, a missing or non-string field, an empty response, chosen
equal to rejected, a modality the model does not take or a media file that is missing or unreadable, a
response longer than the task's fixed answer canvas (`task.answer_length`).

`build_pairs` makes pairs from a model's own samples, as LLaDA 1.5 does from its SFT model: each
prompt is sampled `samples` times, the completions are scored against the example's reference by a
reward (multimodal/train/rewards.py), and the best and the worst form a pair when their scores differ.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from multimodal.sampling.engine import Engine
from multimodal.train.rewards import build_reward
from multimodal.types import ModalityIO
from tasks import Task
from tasks.base import Layout

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One pair laid out: the same prompt layout with the chosen and with the rejected answer."""

    chosen: Layout
    rejected: Layout


@dataclass
class PairReport:
    """What reading a pair file kept and skipped (reason -> rows)."""

    path: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        skips = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return f"{self.path}: {self.kept} of {self.read} pairs kept; skipped: {skips}"


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    for name in FIELDS:
        if name not in row:
            return f"missing field '{name}'"
        if not isinstance(row[name], str):
            return f"field '{name}' is not a string"
    if not row["chosen"].strip() or not row["rejected"].strip():
        return "empty response"
    if row["chosen"].strip() == row["rejected"].strip():
        return "chosen equals rejected"
    if not isinstance(row.get("media", {}), dict):
        return "media is not an object"
    return None


def read_pairs(
    path: str | Path, task: Task, tokenizer: Any, modalities: Mapping[str, ModalityIO]
) -> tuple[list[PreferencePair], PairReport]:
    """The usable pairs of a JSON-lines file and the report of what was skipped (module docstring).
    A missing file, or one with no usable pair, is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference pairs not found: {path}")
    report, pairs = PairReport(str(path)), []
    limit = getattr(task.config, "answer_length", None)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        report.read += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            report.skipped["not JSON"] += 1
            continue
        problem = _row_problem(row)
        media = {}
        if problem is None:
            unknown = sorted(set(row.get("media", {})) - set(modalities))
            if unknown:
                problem = f"unknown media '{unknown[0]}'"
            media = {k: v if Path(v).is_absolute() else str(path.parent / v) for k, v in row.get("media", {}).items()}
        if problem is None:
            try:
                base = task.layout_for_prompt(row["prompt"], media or None)
            except (OSError, ValueError) as err:
                problem = "bad media" if media else "prompt refused by the task"
                log.debug("%s line %d: %s", path, number, err)
        if problem is None and limit is not None:
            longest = max(len(tokenizer.encode(row[k])) for k in ("chosen", "rejected"))
            if longest > limit:
                problem = "response longer than task.answer_length"
        if problem is not None:
            report.skipped[problem] += 1
            continue
        meta = {"id": str(row.get("id", f"{path.name}:{number}"))}
        pairs.append(
            PreferencePair(
                replace(base, answer=row["chosen"], meta=meta), replace(base, answer=row["rejected"], meta=meta)
            )
        )
    report.kept = len(pairs)
    if not pairs:
        raise ValueError(f"{report.summary()}: no usable preference pair")
    return pairs, report


def write_pairs(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write pair rows as JSON lines (through a temporary file: a reader never sees half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    tmp.replace(path)
    return path


_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"))


def media_files(layout: Layout, media_dir: Path | None) -> dict[str, str]:
    """The layout's media as file paths, one item per modality: files as they are (absolute), items held
    as encoded bytes written under `media_dir` (named by example and modality, the extension sniffed)."""
    out = {}
    for name, items in layout.media.items():
        if not items:
            continue
        item = items[0]
        if len(items) != 1 or not isinstance(item, (str, Path, bytes)):
            raise ValueError(
                f"example {layout.meta.get('id')}: pairs carry one {name} file per prompt; this task's items are "
                f"{type(item).__name__} x {len(items)}"
            )
        if isinstance(item, bytes):
            if media_dir is None:
                raise ValueError(f"example {layout.meta.get('id')}: its {name} is in memory; give a media folder")
            suffix = next((ext for magic, ext in _MAGIC if item.startswith(magic)), ".bin")
            stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(layout.meta.get("id", "item")))
            path = media_dir / f"{stem}.{name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item)
            out[name] = str(path.resolve())
        else:
            out[name] = str(Path(item).resolve())
    return out


def build_pairs(
    task: Task,
    engine: Engine,
    layouts: Sequence[Layout],
    samples: int,
    rewards: Mapping[str, float],
    seed: int = 0,
    media_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pair rows from the engine's own samples of each layout's prompt (module docstring), and stats.

    The engine's sampler must sample (temperature > 0), or every completion of a prompt is the same.
    Media held in memory as encoded bytes (rendered images, synthesised speech) are written under
    `media_dir`; rows name every media file by its absolute path.
    """
    if samples < 2:
        raise ValueError(f"need at least 2 samples per prompt to rank, got {samples}")
    for lay in layouts:  # before any sampling: a pair row holds one plain prompt
        if lay.history or (lay.prompt_suffix and task.config.chat):
            raise ValueError(f"example {lay.meta.get('id')}: pairs hold single-turn prompts")
    reward = build_reward(rewards, task)
    rows, ties, scores = [], 0, []
    generator = engine.generator(seed)
    per_call = max(1, engine.batch_size // samples)  # prompts per generation call
    for start in range(0, len(layouts), per_call):
        chunk = list(layouts[start : start + per_call])
        repeated = [lay for lay in chunk for _ in range(samples)]
        batch = task.prompt_batch(repeated, engine.tokenizer, engine.modalities)
        texts = engine.texts(engine.generate(batch, generator=generator))
        for i, lay in enumerate(chunk):
            own = texts[i * samples : (i + 1) * samples]
            values = [reward(lay.prompt, t, lay) for t in own]
            scores += values
            said = [j for j in range(samples) if own[j].strip()]  # an empty completion makes no pair row
            best = max(said, key=values.__getitem__, default=None)
            worst = min(said, key=values.__getitem__, default=None)
            if best is None or values[best] == values[worst] or own[best].strip() == own[worst].strip():
                ties += 1
                continue
            row = {
                "id": lay.meta.get("id", f"{start + i}"),
                "prompt": lay.prompt + lay.prompt_suffix,
                "chosen": own[best],
                "rejected": own[worst],
                "chosen_reward": values[best],
                "rejected_reward": values[worst],
            }
            media = media_files(lay, media_dir)
            if media:
                row["media"] = media
            rows.append(row)
    stats = {
        "prompts": len(layouts),
        "pairs": len(rows),
        "no_pair": ties,
        "mean_reward": float(torch.tensor(scores).mean()) if scores else float("nan"),
    }
    return rows, stats
