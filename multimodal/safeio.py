"""Reading weight files safely, with one error that names the file.

safetensors files are read with the safetensors library; PyTorch pickles (``.bin``, ``.pt``) only
through ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
A corrupt or truncated safetensors file, a pickle holding other objects and a file that is no
checkpoint at all each raise `WeightsFileError` (a ValueError, so the CLI prints it as one line)
naming the file. torch's own refusal suggests ``weights_only=False``, which would run the file's
code; that advice is not passed on: the fix is to convert the file to safetensors.

Like the registry, this module depends on nothing in the project, so the encoders use it too.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


class WeightsFileError(ValueError):
    """A weights file that cannot be read safely."""


def _unreadable(path: Path, err: Exception) -> WeightsFileError:
    detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    return WeightsFileError(f"{path} is not a readable safetensors file (corrupt or truncated?): {detail}")


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as err:  # SafetensorError, OSError: the header cannot be parsed
        raise _unreadable(path, err) from None


def read_safetensors(
    path: str | Path, keys: Iterable[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file (all, or `keys`) and its metadata."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys()) if keys is None else list(keys)
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except Exception as err:  # a truncated file fails when its tensors are read, not at open
        raise _unreadable(path, err) from None


def read_pickle(path: str | Path, map_location: Any = "cpu") -> Any:
    """A PyTorch checkpoint read with ``weights_only=True``; refused objects are one error naming the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsFileError(
            f"{path} holds objects other than tensors, which are not loaded (loading them would run the "
            "file's code); convert the checkpoint to safetensors where it was made"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise WeightsFileError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {detail}"
        ) from None
