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
from pathlib import Path

import torch

from multimodal.backbone.config import BackboneConfig
from multimodal.backbone.convert_dream import is_dream, load_dream_checkpoint
from multimodal.backbone.convert_llada2 import is_llada2, load_llada2_checkpoint
from multimodal.backbone.convert_moe import is_llada_moe, load_llada_moe_checkpoint
from multimodal.backbone.released import CheckpointError, SpecialTokens, read_tensors, shard_files, write_folder
from multimodal.backbone.transformer import LLaDABackbone

__all__ = ["CheckpointError", "SpecialTokens", "load_llada_checkpoint", "save_llada_checkpoint"]

log = logging.getLogger(__name__)

PREFIX = "model.transformer."

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


def load_llada_checkpoint(
    folder: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[LLaDABackbone, SpecialTokens]:
    """Load a released LLaDA folder into a new `LLaDABackbone` (a LLaDA-MoE folder: `LLaDAMoEBackbone`,
    convert_moe.py; a Dream folder: `DreamBackbone`, convert_dream.py; a LLaDA2 folder: `LLaDA2Backbone`,
    convert_llada2.py).

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
    if is_llada_moe(folder):  # the same model_type "llada": told apart by its MoE fields
        return load_llada_moe_checkpoint(folder, dtype, device)
    if is_dream(folder):
        return load_dream_checkpoint(folder, dtype, device)
    if is_llada2(folder):
        return load_llada2_checkpoint(folder, dtype, device)
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
    """Write `model` as a released-format LLaDA folder (config.json, safetensors shards, index)."""
    state = {PREFIX + k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return write_folder(state, llada_json_from_config(model.config, special or SpecialTokens()), Path(folder),
                        max_shard_bytes)  # fmt: skip
