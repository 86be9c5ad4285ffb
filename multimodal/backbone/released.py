"""Released Hugging Face checkpoint folders, whatever the family: the shard / index layout, reading the
tensors a key table names, writing a folder atomically, and the errors and special ids every
converter shares (convert.py: dense LLaDA; convert_moe.py: LLaDA-MoE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from multimodal.safeio import read_pickle, read_safetensors, safetensors_keys

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder that does not match the backbone it is loaded into."""


@dataclass(frozen=True)
class SpecialTokens:
    """Special ids stored in a LLaDA config.json."""

    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081


def shard_files(folder: Path) -> dict[str, Path]:
    """Map every tensor key of a checkpoint folder to the file that holds it."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map")
        files = {}
        for key, name in weight_map.items():
            file = folder / name
            if not file.is_file():
                raise CheckpointError(f"{index} lists shard {name} for '{key}', but {file} does not exist")
            files[key] = file
        return files
    single = folder / SINGLE_NAME
    if single.is_file():
        return {key: single for key in safetensors_keys(single)}
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return {key: path for path in bins for key in read_pickle(path, map_location="meta")}
    raise CheckpointError(f"{folder} holds no {SINGLE_NAME}, {INDEX_NAME} or pytorch_model*.bin")


def read_tensors(files: dict[str, Path], keys: list[str]) -> dict[str, torch.Tensor]:
    """The tensors `keys` of a checkpoint, each read from the file `files` maps it to."""
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(files[key], []).append(key)
    out: dict[str, torch.Tensor] = {}
    for file, names in by_file.items():
        if file.suffix == ".bin":
            state = read_pickle(file)
            out.update({k: state[k] for k in names})
        else:
            out.update(read_safetensors(file, names)[0])
    return out


def write_folder(state: dict[str, torch.Tensor], config: dict, folder: Path, max_shard_bytes: int) -> Path:
    """Write released-layout tensors and their config.json: one model.safetensors, or shards and an index.

    Files are written under temporary names and renamed at the end, so an interrupted export never
    leaves a folder that looks complete.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    written: list[tuple[Path, Path]] = []
    if len(shards) == 1:
        final = folder / SINGLE_NAME
        tmp = final.with_suffix(".tmp")
        save_file(shards[0], str(tmp), metadata={"format": "pt"})
        written.append((tmp, final))
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            tmp = folder / (name + ".tmp")
            save_file(shard, str(tmp), metadata={"format": "pt"})
            written.append((tmp, folder / name))
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index_tmp = folder / (INDEX_NAME + ".tmp")
        index_tmp.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        written.append((index_tmp, folder / INDEX_NAME))
    config_tmp = folder / "config.json.tmp"
    config_tmp.write_text(json.dumps(config, indent=2))
    written.append((config_tmp, folder / "config.json"))
    for tmp, final in written:
        tmp.replace(final)
    return folder


def stack_experts(experts: dict[str, dict[int, torch.Tensor]], count: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per-expert tensors found in a checkpoint (our stacked key ``blocks.N.moe.<proj>`` -> {expert:
    tensor}) stacked into (E, ...) tensors; the released names (``model.layers.N.mlp.experts.E.<proj>
    .weight``, the layout LLaDA-MoE and LLaDA2 share) of the experts a group lacks come back too."""
    stacked, missing = {}, []
    for key, by_expert in experts.items():
        _, layer, _, proj = key.split(".")
        gone = [e for e in range(count) if e not in by_expert]
        missing += [f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight" for e in gone]
        if not gone:
            stacked[key] = torch.stack([by_expert[e] for e in range(count)])
    return stacked, missing


def assign_checked(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    folder: Path,
    unexpected: list[str] = (),
    missing: list[str] = (),
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Assign `state` (our keys) to `model` built on the meta device, after one check that names every
    missing, unexpected and mis-shaped key together (`unexpected` / `missing`: released keys the
    converter's table already found wanting); tensors are cast to `dtype` on `device`."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unexpected = sorted(unexpected) + sorted(k for k in state if k not in expected)
    missing = sorted(missing) + sorted(k for k in expected if k not in state)
    if missing or unexpected:
        parts = [f"missing keys: {', '.join(missing)}"] if missing else []
        parts += [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else []
        raise CheckpointError(f"{folder}: " + "; ".join(parts))
    wrong = [f"{k} {tuple(t.shape)} (expected {expected[k]})" for k, t in state.items() if t.shape != expected[k]]
    if wrong:
        raise CheckpointError(f"{folder}: mis-shaped keys: {', '.join(wrong)}")
    model.load_state_dict({k: t.to(device=device, dtype=dtype or t.dtype) for k, t in state.items()},
                          strict=True, assign=True)  # fmt: skip
