"""Reading speech corpora into (id, audio, text) records: LibriSpeech folders, JSON-lines manifests
and WebDataset shards, with the same bad-record policy as the image readers.

* LibriSpeech layout: ``<root>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`` with one
  ``<speaker>-<chapter>.trans.txt`` per chapter ("ID TRANSCRIPT" lines).
* Manifest: one JSON object per line with ``audio`` (a path, relative to the manifest's folder) and
  ``text``, optionally ``id`` and anything else (kept as metadata).
* Shards: samples ``<key>.flac|wav|...`` + ``<key>.json`` (``text`` and metadata) or ``<key>.txt``.

Missing, corrupt or empty audio and empty transcripts are bad records: ``skip`` counts and drops
them (logged, and returned in `ReadStats`), ``fail`` raises naming the record (tasks/records.py). Audio is checked by
decoding its header (soundfile.info), not by decoding the samples, so reading stays fast.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

from tasks.records import BadRecord, Policy, ReadStats, keep, shard_samples

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")


def _check_audio(audio: bytes | Path | None, rid: str) -> None:
    import soundfile as sf

    if audio is None:
        raise BadRecord(rid, "missing audio")
    if isinstance(audio, Path) and not audio.is_file():
        raise BadRecord(rid, "missing audio", str(audio))
    try:
        info = sf.info(io.BytesIO(audio) if isinstance(audio, bytes) else str(audio))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise BadRecord(rid, "corrupt audio", str(err)[:80]) from None
    if info.frames == 0:
        raise BadRecord(rid, "empty audio")


def validate(record: dict[str, Any]) -> dict[str, Any]:
    rid = str(record.get("id", "?"))
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRecord(rid, "empty transcript")
    _check_audio(record.get("audio"), rid)
    return record


def read_librispeech(root: str | Path, policy: Policy = "skip") -> tuple[list[dict[str, Any]], ReadStats]:
    """Records of a LibriSpeech-style folder (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech folder not found: {root}")
    stats, out = ReadStats(), []
    for trans in sorted(root.glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = next(
                (trans.parent / f"{uid}.{e}" for e in AUDIO_EXTENSIONS if (trans.parent / f"{uid}.{e}").is_file()),
                trans.parent / f"{uid}.flac",
            )
            keep({"id": uid, "audio": audio, "text": text.lower()}, validate, policy, stats, out)
    stats.log(log, root)
    return out, stats


def read_manifest(path: str | Path, policy: Policy = "skip") -> tuple[list[dict[str, Any]], ReadStats]:
    """Records of a JSON-lines manifest (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    stats, out = ReadStats(), []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as err:
            if policy == "fail":
                raise ValueError(f"{path}:{n}: not a JSON object ({err})") from None
            stats.skipped["bad manifest line"] += 1
            continue
        audio = row.get("audio") or row.get("audio_filepath") or row.get("path")
        record = {
            **row,
            "id": str(row.get("id", f"{path.stem}-{n}")),
            "audio": (path.parent / audio) if audio else None,
            "text": row.get("text"),
        }
        keep(record, validate, policy, stats, out)
    stats.log(log, path)
    return out, stats


def read_speech_shards(paths: list[str | Path], policy: Policy = "skip") -> tuple[list[dict[str, Any]], ReadStats]:
    """Records of WebDataset shards (module docstring); audio bytes are kept encoded."""
    stats, out = ReadStats(), []
    for sample in shard_samples(paths, policy, stats):
        keep(record_from_sample(sample), validate, policy, stats, out)
    stats.log(log, paths[0] if paths else "shards")
    return out, stats


def record_from_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The record (not yet validated) of one raw WebDataset sample; used by `read_speech_shards` and by streaming."""
    key = sample.get("__key__", "?")
    meta: dict[str, Any] = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
    if not isinstance(meta, dict):
        meta = {}
    text = meta.get("text")
    if text is None and "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace").strip()
    audio = next((sample[e] for e in AUDIO_EXTENSIONS if e in sample), None)
    return {**meta, "id": str(meta.get("id", key)), "audio": audio, "text": text}
