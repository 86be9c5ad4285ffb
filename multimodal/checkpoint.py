"""Run checkpoints: weights as safetensors, the fully resolved YAML config and the tokenizer, side by side.

A checkpoint is a folder::

    model.safetensors   every tensor of the model's state dict
    config.yaml         the resolved experiment config (every default written out)
    tokenizer.json      the built-in tokenizer (or tokenizer/ for a Hugging Face one)

Tied weights are stored once (the other names are aliases in the file's metadata). Writes are
atomic: the folder is assembled under a temporary name and renamed into place, so a
run killed at any moment leaves either the previous checkpoint or the new one, never half of one.
`link_checkpoint` gives a second name to a written checkpoint (a run's ``last``) by hard links, so
the weights are written once however many names point at them (files are never changed in place:
every save writes new files and renames, so the names cannot drift apart).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from multimodal.safeio import read_safetensors

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    config_yaml: str,
    writers: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write `model`'s weights, the config text and extra files (name -> writer(path)) atomically."""

    def fill(tmp: Path) -> None:
        tmp.mkdir()
        write_weights(tmp / WEIGHTS, model.state_dict())
        (tmp / CONFIG).write_text(config_yaml)
        for name, writer in (writers or {}).items():
            writer(tmp / name)

    return _write_atomically(Path(folder), fill)


def link_checkpoint(source: str | Path, folder: str | Path) -> Path:
    """Make `folder` an atomic copy of the checkpoint `source` whose files are hard links (no data
    written); a plain copy where the file system has no hard links."""
    source = Path(source)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    return _write_atomically(Path(folder), lambda tmp: shutil.copytree(source, tmp, copy_function=link))


def _write_atomically(folder: Path, fill: Callable[[Path], None]) -> Path:
    """Assemble `folder` under a temporary name with `fill(tmp)` (which may create tmp), then swap it in."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fill(tmp)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s", folder)
    return folder


def write_weights(file: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Save a state dict as safetensors, tied tensors once (the other names are aliases in the metadata)."""
    kept, aliases = _dedupe(state)
    save_file(kept, str(file), metadata={"format": "pt", "aliases": json.dumps(aliases)})


def read_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """A state dict written by `write_weights`, aliases restored (tied names share one tensor)."""
    state, metadata = read_safetensors(file)
    aliases = json.loads(metadata.get("aliases", "{}"))
    for alias, name in aliases.items():
        state[alias] = state[name]
    return state


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied weights (one tensor under two names, e.g. ESM's embedding and LM decoder) are stored once;
    the other names become aliases recorded in the file's metadata."""
    kept: dict[tuple, str] = {}
    out, aliases = {}, {}
    for name in sorted(state):
        t = state[name]
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in kept and t.numel():
            aliases[name] = kept[key]
            continue
        kept[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out, aliases


def load_weights(folder: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load model.safetensors from `folder` into `model`, naming missing / unexpected / mis-shaped keys."""
    file = Path(folder) / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {folder}")
    state = read_weights(file)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if strict and missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong:
        problems.append(f"mis-shaped keys: {', '.join(wrong)}")
    if problems:
        raise ValueError(f"{file}: " + "; ".join(problems))
    with torch.no_grad():
        model.load_state_dict(state, strict=strict)
