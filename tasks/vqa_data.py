"""Reading VQA records from LLaVA-format JSON or WebDataset shards, with a bad-record policy.

A record is ``{"id", "images": [raw image bytes or path, ...], "conversations": [...]}`` with
LLaVA's alternating human / gpt turns and one ``<image>`` placeholder per image. Both sources go
through the same validation, so nothing fails later, halfway through an epoch:

* missing image (file absent, or no image member in a shard sample), corrupt image (PIL cannot
  verify it), no conversation or an empty answer, and a placeholder count that differs from the
  image count are bad records;
* policy ``skip`` drops them and counts each reason (logged, and kept in `ReadStats`); policy
  ``fail`` raises one error naming the record and the reason (tasks/records.py).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Literal

from tasks.records import BadRecord, ReadStats, keep, shard_samples

log = logging.getLogger(__name__)
IMAGE_TOKEN = "<image>"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


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
        keep(record, validate, policy, stats, out)
    stats.log(log, path)
    return out, stats


def read_shards(
    paths: list[str | Path], policy: Literal["skip", "fail"] = "skip"
) -> tuple[list[dict[str, Any]], ReadStats]:
    """Records of WebDataset shards: samples ``<key>.json`` (LLaVA fields) + ``<key>.png|jpg|...``.

    The JSON's ``image`` names the member(s) of the sample holding the image(s); without it the
    sample's single image member is used. Image bytes are kept encoded until collation.
    """
    stats, out = ReadStats(), []
    for sample in shard_samples(paths, policy, stats):
        keep(sample, lambda x: validate(record_from_sample(x)), policy, stats, out)
    stats.log(log, paths[0] if paths else "shards")
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
