"""Import and export LLaDA checkpoints in their released Hugging Face layout.

A released folder holds ``config.json`` and either ``model.safetensors`` or several shards listed by
``model.safetensors.index.json``. Keys are ``model.transformer.<our module name>`` (PAPERS.md
section 1), so the conversion table is a prefix. Loading validates the architecture flags of
config.json (anything our backbone does not implement is refused by name), then the keys: missing,
unexpected and mis-shaped tensors are reported together, by name. Tensors are read with
safetensors (``.bin`` files only through ``torch.load(weights_only=True)``); nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from multimodal.backbone.config import BackboneConfig
from multimodal.backbone.transformer import LLaDABackbone
from multimodal.safeio import read_pickle, read_safetensors, safetensors_keys

log = logging.getLogger(__name__)

PREFIX = "model.transformer."
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# config.json flags of the released modelling code that our backbone does not implement, with the
# value our backbone corresponds to. A checkpoint asking for anything else is refused by name.
REQUIRED_FLAGS = {
    "block_type": "llama",
    "layer_norm_type": "rms",
    "activation_type": "silu",
    "rope": True,
    "alibi": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "scale_logits": False,
    "input_emb_norm": False,
    "attention_layer_norm": False,
    "bias_for_layer_norm": False,
}


class CheckpointError(ValueError):
    """A checkpoint folder that does not match the backbone it is loaded into."""


@dataclass(frozen=True)
class SpecialTokens:
    """Special ids stored in a LLaDA config.json."""

    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081


def config_from_llada_json(path: str | Path) -> tuple[BackboneConfig, SpecialTokens]:
    """Read a released config.json into our BackboneConfig and the special token ids."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no config.json at {file}")
    cfg = json.loads(file.read_text())
    for flag, expected in REQUIRED_FLAGS.items():
        if flag in cfg and cfg[flag] is not None and cfg[flag] != expected:
            raise CheckpointError(
                f"{file}: {flag}={cfg[flag]!r} is not supported (LLaDABackbone implements {flag}={expected!r})"
            )
    for key in ("d_model", "n_layers", "n_heads"):
        if key not in cfg:
            raise CheckpointError(f"{file}: missing required field '{key}'")
    n_heads = int(cfg["n_heads"])
    kv = cfg.get("n_kv_heads") or (1 if cfg.get("multi_query_attention") else n_heads)
    mlp = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4) * cfg["d_model"])
    vocab = cfg.get("embedding_size") or cfg.get("vocab_size")
    if vocab is None:
        raise CheckpointError(f"{file}: missing vocab_size / embedding_size")
    config = BackboneConfig(
        name=path.name if path.is_dir() else path.parent.name,
        d_model=int(cfg["d_model"]),
        n_layers=int(cfg["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(kv),
        mlp_hidden=int(mlp),
        vocab_size=int(vocab),
        max_seq_len=int(cfg.get("max_sequence_length", 4096)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        tie_embeddings=bool(cfg.get("weight_tying", False)),
    )
    special = SpecialTokens(
        mask_token_id=int(cfg.get("mask_token_id", 126336)),
        eos_token_id=int(cfg.get("eos_token_id", 126081)),
        pad_token_id=int(cfg.get("pad_token_id", cfg.get("eos_token_id", 126081))),
    )
    return config, special


def llada_json_from_config(config: BackboneConfig, special: SpecialTokens) -> dict:
    """The config.json the released modelling code reads, for our config."""
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "n_kv_heads": config.kv_heads,
        "mlp_hidden_size": config.mlp_hidden,
        "mlp_ratio": 4,
        "vocab_size": config.vocab_size,
        "embedding_size": config.vocab_size,
        "max_sequence_length": config.max_seq_len,
        "rope_theta": config.rope_theta,
        "rope_full_precision": True,
        "rms_norm_eps": config.rms_norm_eps,
        "weight_tying": config.tie_embeddings,
        "mask_token_id": special.mask_token_id,
        "eos_token_id": special.eos_token_id,
        "pad_token_id": special.pad_token_id,
        **REQUIRED_FLAGS,
        "flash_attention": False,
        "use_cache": False,
    }


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


def load_llada_checkpoint(
    folder: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[LLaDABackbone, SpecialTokens]:
    """Load a released LLaDA folder into a new `LLaDABackbone`.

    The model is built on the meta device and the checkpoint tensors are assigned to it, so an 8B
    model costs one copy of its weights in memory.

    Args:
        folder: directory with config.json and safetensors shards.
        dtype: cast the weights to this dtype (default: keep the stored dtype).
        device: where the weights go.

    Raises:
        CheckpointError: naming the missing, unexpected or mis-shaped keys, or an unsupported flag.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config, special = config_from_llada_json(folder)
    with torch.device("meta"):
        model = LLaDABackbone(config)
    expected = {PREFIX + k: tuple(v.shape) for k, v in model.state_dict().items()}
    files = shard_files(folder)
    missing = sorted(set(expected) - set(files))
    unexpected = sorted(set(files) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if problems:
        raise CheckpointError(f"{folder}: " + "; ".join(problems))
    tensors = read_tensors(files, sorted(expected))
    wrong = [
        f"{k} {tuple(t.shape)} (expected {expected[k]})" for k, t in tensors.items() if tuple(t.shape) != expected[k]
    ]
    if wrong:
        raise CheckpointError(f"{folder}: mis-shaped keys: {', '.join(wrong)}")
    state = {k[len(PREFIX) :]: t.to(device=device, dtype=dtype or t.dtype) for k, t in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded %s (%d tensors, %.1fM parameters)", folder, len(state), config.num_parameters() / 1e6)
    return model, special


def save_llada_checkpoint(
    model: LLaDABackbone,
    folder: str | Path,
    special: SpecialTokens | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Write `model` as a released-format LLaDA folder (config.json, safetensors shards, index).

    Files are written under temporary names and renamed at the end, so an interrupted export never
    leaves a folder that looks complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special = special or SpecialTokens()
    state = {PREFIX + k: v.detach().contiguous() for k, v in model.state_dict().items()}
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
    config_tmp.write_text(json.dumps(llada_json_from_config(model.config, special), indent=2))
    written.append((config_tmp, folder / "config.json"))
    for tmp, final in written:
        tmp.replace(final)
    return folder
