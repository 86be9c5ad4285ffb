"""Reading pretrained weights from local paths only, with safe loaders.

safetensors files are read directly; PyTorch pickles only through ``torch.load(weights_only=True)``,
which refuses arbitrary objects (multimodal/safeio.py: a corrupt or refused file is one error naming
it). A missing path is an error that names it (nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch

from multimodal.safeio import read_pickle, read_safetensors


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors / .bin / .pt / .pth file, or of the single weights file in a folder."""
    path = Path(path)
    if path.is_dir():
        skip = ("training_args", "optimizer", "scheduler", "rng_state")  # trainer state, not weights
        found = [
            f
            for f in sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) or sorted(path.glob("*.pt*"))
            if not f.name.startswith(skip)
        ]
        if not found:
            raise FileNotFoundError(f"no weights file (.safetensors, .bin, .pt) in {path}")
        state: dict[str, torch.Tensor] = {}
        for file in found:
            state.update(load_state_dict(file))
        return state
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (weights load from local paths only)")
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    state = read_pickle(path)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the keys under `prefix` (e.g. ``visual.`` of a full CLIP checkpoint), without it."""
    if not prefix:
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names missing, unexpected and mis-shaped keys together."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    raise_key_problems(source, (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", wrong)))
    module.load_state_dict(state, strict=True)


def raise_key_problems(source: str, groups: tuple[tuple[str, list[str]], ...], limit: int = 20) -> None:
    """One error naming every non-empty group of problem keys (at most `limit` each), or nothing."""
    problems = [
        f"{label}: {', '.join(items[:limit])}{' ...' if len(items) > limit else ''}" for label, items in groups if items
    ]
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
