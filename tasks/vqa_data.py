"""Reading VQA records from LLaVA-format JSON or WebDataset shards, with a bad-record policy.

A record is ``{"id", "images": [raw image bytes or path, ...], "conversations": [...]}`` with
LLaVA's alternating human / gpt turns and one ``<image>`` placeholder per image. Both sources go
through the same validation, so nothing fails later, halfway through an epoch:

* missing image (file absent, or no image member in a shard sample), corrupt image (PIL cannot
  verify it), no conversation or an empty answer, and a placeholder count that differs from the
  image count are bad records;
* policy ``skip`` drops them and counts each reason (logged, and kept in `ReadStats`); policy
  ``fail`` raises one error naming the record and the reason.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)
IMAGE_TOKEN = "<image>"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


@dataclass
class ReadStats:
    """What a read kept and what it skipped, by reason."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"kept {self.kept}, skipped {sum(self.skipped.values())} ({reasons})"


class BadRecord(ValueError):
    """A record that cannot be used, with the reason as a short key."""

    def __init__(self, record_id: str, reason: str, detail: str = ""):
        super().__init__(f"record {record_id}: {reason}{': ' + detail if detail else ''}")
        self.reason = reason


def _check_image(data: bytes | Path, record_id: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.verify()
    except FileNotFoundError:
        raise BadRecord(record_id, "missing image", str(data)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadRecord(record_id, "corrupt image", str(err)[:80]) from None


def validate(record: dict[str, Any]) -> dict[str, Any]:
    """Check one record (see the module docstring); returns it or raises BadRecord."""
    rid = str(record.get("id", "?"))
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise BadRecord(rid, "no conversation")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            raise BadRecord(rid, "malformed conversation", f"turn {i} should be a '{expected}' turn")
        if expected == "gpt" and not turn["value"].strip():
            raise BadRecord(rid, "empty answer", f"turn {i}")
    images = record.get("images", [])
    placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in turns[0::2])
    if placeholders != len(images):
        reason = "no placeholder" if placeholders == 0 else "placeholder count"
        raise BadRecord(rid, reason, f"{placeholders} '{IMAGE_TOKEN}' for {len(images)} images")
    for image in images:
        if image is None:
            raise BadRecord(rid, "missing image")
        _check_image(image, rid)
    return record


def _keep(record: dict[str, Any], policy: str, stats: ReadStats, out: list[dict[str, Any]]) -> None:
    try:
        out.append(validate(record))
        stats.kept += 1
    except BadRecord as err:
        if policy == "fail":
            raise
        stats.skipped[err.reason] += 1


def read_llava_json(
    path: str | Path, image_root: str | Path | None = None, policy: Literal["skip", "fail"] = "skip"
) -> tuple[list[dict[str, Any]], ReadStats]:
    """Records of a LLaVA-format JSON file (a list of samples; ``image`` a path or list of paths)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"VQA annotation file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a list of samples")
    root = Path(image_root) if image_root else path.parent
    stats, out = ReadStats(), []
    for i, sample in enumerate(data):
        if not isinstance(sample, dict):
            sample = {"id": str(i)}
        names = sample.get("image", [])
        names = [names] if isinstance(names, str) else list(names or [])
        record = {
            "id": str(sample.get("id", i)),
            "conversations": sample.get("conversations"),
            "images": [root / n for n in names],
            **{k: v for k, v in sample.items() if k not in ("id", "image", "conversations")},
        }
        _keep(record, policy, stats, out)
    _log(path, stats)
    return out, stats


def read_shards(
    paths: list[str | Path], policy: Literal["skip", "fail"] = "skip"
) -> tuple[list[dict[str, Any]], ReadStats]:
    """Records of WebDataset shards: samples ``<key>.json`` (LLaVA fields) + ``<key>.png|jpg|...``.

    The JSON's ``image`` names the member(s) of the sample holding the image(s); without it the
    sample's single image member is used. Image bytes are kept encoded until collation.
    """
    import webdataset as wds

    stats, out = ReadStats(), []
    urls = [str(p) for p in paths]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard files not found: {', '.join(missing[:5])}")

    def on_error(exn: Exception) -> bool:
        if policy == "fail":
            raise exn
        stats.skipped["unreadable sample"] += 1
        return True

    for sample in wds.WebDataset(urls, shardshuffle=False, handler=on_error, empty_check=False):
        try:
            record = record_from_sample(sample)
        except BadRecord as err:
            if policy == "fail":
                raise
            stats.skipped[err.reason] += 1
            continue
        _keep(record, policy, stats, out)
    _log(urls[0] if urls else "shards", stats)
    return out, stats


def record_from_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The record (not yet validated) of one raw WebDataset sample (`read_shards`); used by `read_shards`
    and by streaming. Raises BadRecord when the sample has no JSON object."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["json"]) if "json" in sample else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise BadRecord(key, "no JSON metadata")
    names = meta.get("image", [])
    names = [names] if isinstance(names, str) else list(names or [])
    members = [n.split(".", 1)[-1] if n.startswith(key) else n for n in names]
    if not members:
        members = [e for e in IMAGE_EXTENSIONS if e in sample][:1]
    images = [sample.get(m.lower()) for m in members]
    return {
        "id": str(meta.get("id", key)),
        "conversations": meta.get("conversations"),
        "images": images,
        **{k: v for k, v in meta.items() if k not in ("id", "image", "conversations")},
    }


def _log(source: Any, stats: ReadStats) -> None:
    if stats.skipped:
        log.warning("%s: %s", source, stats.summary())
    else:
        log.info("%s: %s", source, stats.summary())
