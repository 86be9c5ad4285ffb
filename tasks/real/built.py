"""A data set built once from pinned assets: ``<data_dir>/<hash of its build settings>``, complete when its
manifest.json (written last) exists, so an interrupted build is redone and settings never mix."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def built_dataset(data_dir: str, build: Any, write: Callable[[Path, Any], dict], what: str) -> Path:
    """``<data_dir>/<hash of the build settings>``, written by `write(folder, build)` the first time (its
    manifest.json, written last, marks it complete)."""
    digest = hashlib.sha1(json.dumps(asdict(build), sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(data_dir) / digest
    if not (folder / "manifest.json").is_file():
        log.info("building the %s data set in %s from its pinned assets", what, folder)
        write(folder, build)
    return folder
