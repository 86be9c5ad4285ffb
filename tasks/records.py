"""Reading records under a bad-record policy: the one place that counts what a reader skips.

Every reader (VQA, speech, protein, the shard writer) validates each record before anything trains on
it, so nothing fails halfway through an epoch. A record that cannot be used raises `BadRecord` with a
short reason; under policy ``skip`` it is dropped and counted per reason in `ReadStats` (logged once
per source), under ``fail`` the error names the record and the reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Policy = Literal["skip", "fail"]


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


def shard_samples(paths: list[str | Path], policy: Policy, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """The raw samples of local WebDataset shards in order; a sample webdataset cannot read is counted
    as ``unreadable sample`` (``skip``) or raises (``fail``). Missing shard files are one error naming them."""
    import webdataset as wds

    urls = [str(p) for p in paths]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard files not found: {', '.join(missing[:5])}")

    def on_error(exn: Exception) -> bool:
        if policy == "fail":
            raise exn
        stats.skipped["unreadable sample"] += 1
        return True

    yield from wds.WebDataset(urls, shardshuffle=False, handler=on_error, empty_check=False)
