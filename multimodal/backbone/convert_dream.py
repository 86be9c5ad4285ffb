"""Read and write Dream checkpoints in their released Hugging Face layout (Qwen2's keys).

A Dream folder's config.json says ``model_type: "Dream"`` (class ``DreamModel``). Key table:

    model.embed_tokens                        wte
    model.layers.N.input_layernorm            blocks.N.attn_norm
    model.layers.N.self_attn.{q,k,v}_proj     blocks.N.{q,k,v}_proj   (weight and bias)
    model.layers.N.self_attn.o_proj           blocks.N.attn_out
    model.layers.N.post_attention_layernorm   blocks.N.ff_norm
    model.layers.N.mlp.gate_proj              blocks.N.ff_proj
    model.layers.N.mlp.up_proj                blocks.N.up_proj
    model.layers.N.mlp.down_proj              blocks.N.ff_out
    model.norm                                ln_f
    lm_head                                   ff_out

Fields the backbone does not implement are refused by name (rope scaling, sliding-window attention,
an activation other than SiLU); a tied head is taken (`tie_word_embeddings`). The release's logit
shift needs no weights: the backbone applies it (backbone/dream.py).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from multimodal.backbone.dream import DreamBackbone, DreamConfig
from multimodal.backbone.released import (
    CheckpointError,
    SpecialTokens,
    assign_checked,
    read_tensors,
    shard_files,
    write_folder,
)

log = logging.getLogger(__name__)

_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q_proj.weight",
    "self_attn.q_proj.bias": "q_proj.bias",
    "self_attn.k_proj.weight": "k_proj.weight",
    "self_attn.k_proj.bias": "k_proj.bias",
    "self_attn.v_proj.weight": "v_proj.weight",
    "self_attn.v_proj.bias": "v_proj.bias",
    "self_attn.o_proj.weight": "attn_out.weight",
    "post_attention_layernorm.weight": "ff_norm.weight",
    "mlp.gate_proj.weight": "ff_proj.weight",
    "mlp.up_proj.weight": "up_proj.weight",
    "mlp.down_proj.weight": "ff_out.weight",
}
_TOP = {
    "model.embed_tokens.weight": "wte.weight",
    "model.norm.weight": "ln_f.weight",
    "lm_head.weight": "ff_out.weight",
}
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)$")
DREAM_SPECIAL = SpecialTokens(mask_token_id=151666, eos_token_id=151643, pad_token_id=151643)


def is_dream(folder: Path) -> bool:
    """Whether `folder` holds a released Dream config.json."""
    file = folder / "config.json"
    return file.is_file() and str(json.loads(file.read_text()).get("model_type", "")).lower() == "dream"


def ours(released: str) -> str:
    """Our key for one released key (CheckpointError when the table has none)."""
    if released in _TOP:
        return _TOP[released]
    m = _LAYER_KEY.match(released)
    if m and m.group(2) in _LAYER:
        return f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}"
    raise CheckpointError(f"unexpected key: {released}")


def config_from_dream_json(folder: Path) -> tuple[DreamConfig, SpecialTokens]:
    """Our config and the special ids of a released Dream config.json."""
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if cfg.get(key) is None:
            raise CheckpointError(f"{file}: missing required field '{key}'")
    if cfg.get("rope_scaling") is not None:
        raise CheckpointError(f"{file}: rope_scaling={cfg['rope_scaling']!r} is not supported")
    if cfg.get("use_sliding_window"):
        raise CheckpointError(f"{file}: use_sliding_window=true is not supported (full attention)")
    if str(cfg.get("hidden_act", "silu")) != "silu":
        raise CheckpointError(f"{file}: hidden_act={cfg['hidden_act']!r} is not supported (silu)")
    config = DreamConfig(
        name=folder.name,
        d_model=int(cfg["hidden_size"]),
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=int(cfg["num_attention_heads"]),
        n_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        mlp_hidden=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        max_seq_len=int(cfg.get("max_position_embeddings", 32768)),
        rope_theta=float(cfg.get("rope_theta", 1e6)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    d = DREAM_SPECIAL
    special = SpecialTokens(
        mask_token_id=int(cfg.get("mask_token_id", d.mask_token_id)),
        eos_token_id=int(cfg.get("eos_token_id", d.eos_token_id)),
        pad_token_id=int(cfg.get("pad_token_id", d.pad_token_id)),
    )
    return config, special


def dream_json_from_config(config: DreamConfig, special: SpecialTokens) -> dict:
    """The config.json the released modelling file reads, for our config."""
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "intermediate_size": config.mlp_hidden,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "tie_word_embeddings": config.tie_embeddings,
        "mask_token_id": special.mask_token_id,
        "eos_token_id": special.eos_token_id,
        "pad_token_id": special.pad_token_id,
        "bos_token_id": special.eos_token_id,
    }


def load_dream_checkpoint(
    folder: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[DreamBackbone, SpecialTokens]:
    """Load a released Dream folder into a new `DreamBackbone` (built on meta, tensors assigned).

    Raises:
        CheckpointError: naming the missing, unexpected or mis-shaped keys, or an unsupported field.
    """
    folder = Path(folder)
    config, special = config_from_dream_json(folder)
    with torch.device("meta"):
        model = DreamBackbone(config)
    files = shard_files(folder)
    state, unexpected = {}, []
    for key, tensor in read_tensors(files, sorted(files)).items():
        try:
            state[ours(key)] = tensor
        except CheckpointError:
            unexpected.append(key)
    assign_checked(model, state, folder, unexpected, dtype=dtype, device=device)
    log.info("loaded Dream %s (%.1fM parameters)", folder, config.num_parameters() / 1e6)
    return model, special


def save_dream_checkpoint(
    model: DreamBackbone, folder: str | Path, special: SpecialTokens = DREAM_SPECIAL, max_shard_bytes: int = 5 * 1024**3
) -> Path:
    """Write `model` as a released-layout Dream folder (config.json, safetensors shards, index)."""
    inverse = {v: k for k, v in _TOP.items()}
    layer = {v: k for k, v in _LAYER.items()}
    state = {}
    for key, tensor in model.state_dict().items():
        if key in inverse:
            state[inverse[key]] = tensor.detach().contiguous()
        else:
            _, i, rest = key.split(".", 2)
            state[f"model.layers.{i}.{layer[rest]}"] = tensor.detach().contiguous()
    return write_folder(state, dream_json_from_config(model.config, special), Path(folder), max_shard_bytes)
