"""Reading records under a bad-record policy: the one place that counts what a reader skips.

Every reader (VQA, speech, protein, the shard writer) validates each record before anything trains on
it, so nothing fails halfway through an epoch. A record that cannot be used raises `BadRecord` with a
short reason; under policy ``skip`` it is dropped and counted per reason in `ReadStats` (logged once
per source), under ``fail`` the error names the record and the reason.

Shards are written with a shard index beside them (``shards.index.json``, webdataset's wids format:
each shard's file name and sample count). A truncated shard ends early: webdataset reports one
unreadable sample where the cut falls, and the records after it would vanish without a trace, so
`shard_samples` compares what each indexed shard gave with its count and counts the rest as
``cut off by a truncated shard``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Policy = Literal["skip", "fail"]
INDEX_NAME = "shards.index.json"
log = logging.getLogger(__name__)


class BadRecord(ValueError):
    """A record that cannot be used, with the reason as a short key."""

    def __init__(self, record_id: str, reason: str, detail: str = ""):
        super().__init__(f"record {record_id}: {reason}{': ' + detail if detail else ''}")
        self.reason = reason


@dataclass
class ReadStats:
    """What a read kept and what it skipped, by reason."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"kept {self.kept}, skipped {sum(self.skipped.values())} ({reasons})"

    def log(self, logger: logging.Logger, source: Any) -> None:
        """One line per source: a warning when anything was skipped."""
        (logger.warning if self.skipped else logger.info)("%s: %s", source, self.summary())


def keep(
    record: dict[str, Any],
    validate: Callable[[dict[str, Any]], dict[str, Any]],
    policy: Policy,
    stats: ReadStats,
    out: list[dict[str, Any]],
) -> None:
    """Append `validate(record)` to `out`, or count its BadRecord reason (policy ``skip``) or raise (``fail``)."""
    try:
        out.append(validate(record))
        stats.kept += 1
    except BadRecord as err:
        if policy == "fail":
            raise
        stats.skipped[err.reason] += 1


def write_shard_index(folder: str | Path, counts: dict[str, int]) -> Path:
    """Record the sample count of each shard written to `folder` (names relative to it) in its shard index,
    keeping the entries of other shards already there."""
    path = Path(folder) / INDEX_NAME
    known = _index_counts(path)
    known.update(counts)
    shardlist = [{"url": name, "nsamples": n} for name, n in sorted(known.items())]
    path.write_text(
        json.dumps({"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": shardlist}, indent=1)
    )
    return path


def _index_counts(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(e["url"]): int(e["nsamples"]) for e in data.get("shardlist", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s is not a readable shard index; truncated shards are not counted", path)
        return {}


def shard_samples(paths: list[str | Path], policy: Policy, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """The raw samples of local WebDataset shards in order; a sample webdataset cannot read is counted
    as ``unreadable sample`` (``skip``) or raises (``fail``), and records an indexed shard should hold
    but did not give as ``cut off by a truncated shard`` (module docstring). Missing shard files are one
    error naming them."""
    import webdataset as wds

    urls = [str(p) for p in paths]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard files not found: {', '.join(missing[:5])}")
    errors = [0]

    def on_error(exn: Exception) -> bool:
        if policy == "fail":
            raise exn
        stats.skipped["unreadable sample"] += 1
        errors[0] += 1
        return True

    seen: Counter = Counter()
    for sample in wds.WebDataset(urls, shardshuffle=False, handler=on_error, empty_check=False):
        seen[str(sample.get("__url__"))] += 1
        yield sample
    short = {}
    for url in urls:
        expected = _index_counts(Path(url).parent / INDEX_NAME).get(Path(url).name)
        if expected is not None and seen[url] < expected:
            short[url] = expected - seen[url]
    lost = sum(short.values()) - errors[0]  # the sample at each cut was counted as unreadable already
    if short and policy == "fail":
        raise BadRecord(next(iter(short)), "truncated shard", f"{sum(short.values())} records missing")
    if lost > 0:
        stats.skipped["cut off by a truncated shard"] += lost
    for url, n in short.items():
        log.warning("%s gave %d records fewer than its shard index lists (truncated?)", url, n)
