"""Which device a job runs on: ``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

Its own module because training (train/build.py) and opening a model for decoding (sources.py) both
choose one, and neither should import the other for it.
"""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """The torch device `name` asks for; a clear error when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but no CUDA device is available")
    return torch.device(name)
