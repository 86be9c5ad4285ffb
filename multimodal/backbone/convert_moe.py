"""Read and write LLaDA-MoE checkpoints in their released Hugging Face layout.

The release (class ``LLaDAMoEModelLM``) shares ``model_type: "llada"`` with dense LLaDA, so a folder is
told apart by its fields: `num_experts` / `expert_intermediate_size` mean MoE. Its keys follow
transformers' OLMoE naming; the table below maps them onto our module names, stacking the per-expert
``mlp.experts.E.{gate,up,down}_proj`` matrices into our (E, ...) tensors (and splitting them on export):

    model.embed_tokens                          wte
    model.layers.N.input_layernorm              blocks.N.attn_norm
    model.layers.N.self_attn.{q,k,v}_proj       blocks.N.{q,k,v}_proj
    model.layers.N.self_attn.o_proj             blocks.N.attn_out
    model.layers.N.self_attn.{q,k}_norm         blocks.N.{q,k}_norm
    model.layers.N.post_attention_layernorm     blocks.N.ff_norm
    model.layers.N.mlp.gate                     blocks.N.moe.router
    model.layers.N.mlp.expert_bias              blocks.N.moe.expert_bias   (a buffer, when enabled)
    model.layers.N.mlp.experts.E.gate_proj      blocks.N.moe.gate_proj[E]
    model.layers.N.mlp.experts.E.up_proj        blocks.N.moe.up_proj[E]
    model.layers.N.mlp.experts.E.down_proj      blocks.N.moe.down_proj[E]
    model.norm                                  ln_f
    lm_head                                     ff_out

Config fields the modelling file reads but our backbone does not implement are refused by name:
dense layers between MoE ones (`moe_layer_freq` with a 0), a shared expert, attention biases,
`clip_qkv`, rope scaling, partial rotary. Fields the release reads and ignores (`norm_topk_prob`,
`moe_router_score_function`, `routed_scaling_factor`) are ignored here too.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import torch

from multimodal.backbone.moe import LLaDAMoEBackbone, MoEBackboneConfig
from multimodal.backbone.released import (
    CheckpointError,
    SpecialTokens,
    assign_checked,
    read_tensors,
    shard_files,
    stack_experts,
    write_folder,
)

log = logging.getLogger(__name__)

# released key pattern -> our key (per layer); experts are handled apart (stacked)
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q_proj.weight",
    "self_attn.k_proj.weight": "k_proj.weight",
    "self_attn.v_proj.weight": "v_proj.weight",
    "self_attn.o_proj.weight": "attn_out.weight",
    "self_attn.q_norm.weight": "q_norm.weight",
    "self_attn.k_norm.weight": "k_norm.weight",
    "post_attention_layernorm.weight": "ff_norm.weight",
    "mlp.gate.weight": "moe.router.weight",
    "mlp.expert_bias": "moe.expert_bias",
}
_TOP = {
    "model.embed_tokens.weight": "wte.weight",
    "model.norm.weight": "ln_f.weight",
    "lm_head.weight": "ff_out.weight",
}
_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)$")

# (field, the only value our backbone implements); None in the file counts as the default
_REFUSED = {"attention_bias": False, "clip_qkv": None, "rope_scaling": None}


def is_llada_moe(folder: Path) -> bool:
    """Whether `folder` holds a released LLaDA-MoE config.json (module docstring)."""
    file = folder / "config.json"
    if not file.is_file():
        return False
    cfg = json.loads(file.read_text())
    moe = cfg.get("num_experts") is not None or cfg.get("expert_intermediate_size") is not None
    return moe and cfg.get("model_type", "llada") == "llada"


def config_from_moe_json(folder: Path) -> tuple[MoEBackboneConfig, SpecialTokens]:
    """Our config and the special ids of a released LLaDA-MoE config.json."""
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_experts"):
        if cfg.get(key) is None:
            raise CheckpointError(f"{file}: missing required field '{key}'")
    for key, implemented in _REFUSED.items():
        if cfg.get(key) not in (None, implemented):
            raise CheckpointError(f"{file}: {key}={cfg[key]!r} is not supported (LLaDAMoEBackbone: {implemented!r})")
    if cfg.get("shared_expert_intermediate_size") not in (None, 0):
        raise CheckpointError(
            f"{file}: a shared expert is not supported (shared_expert_intermediate_size must be null)"
        )
    if any(f == 0 for f in cfg.get("moe_layer_freq") or []):
        raise CheckpointError(f"{file}: dense layers (moe_layer_freq has a 0) are not supported: every layer is MoE")
    if cfg.get("partial_rotary_factor") not in (None, -1, 1, 1.0):
        raise CheckpointError(f"{file}: partial_rotary_factor={cfg['partial_rotary_factor']} is not supported")
    if str(cfg.get("hidden_act", "silu")) != "silu":
        raise CheckpointError(f"{file}: hidden_act={cfg['hidden_act']!r} is not supported (silu)")
    eos = cfg.get("eos_token_id", 156892)
    config = MoEBackboneConfig(
        name=folder.name,
        d_model=int(cfg["hidden_size"]),
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=int(cfg["num_attention_heads"]),
        n_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        mlp_hidden=int(cfg["expert_intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
        rope_theta=float(cfg["rope_theta"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        n_experts=int(cfg["num_experts"]),
        experts_per_token=int(cfg["num_experts_per_tok"]),
        qk_norm=bool(cfg.get("qk_layernorm")),
        expert_bias=bool(cfg.get("moe_router_enable_expert_bias")),
    )
    special = SpecialTokens(
        mask_token_id=int(cfg.get("mask_token_id", 156895)),
        eos_token_id=int(eos),
        pad_token_id=int(cfg.get("pad_token_id", eos)),
    )
    return config, special


def moe_json_from_config(config: MoEBackboneConfig, special: SpecialTokens) -> dict:
    """The config.json the released modelling file reads, for our config."""
    return {
        "architectures": ["LLaDAMoEModelLM"],
        "model_type": "llada",
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "expert_intermediate_size": config.mlp_hidden,
        "dense_intermediate_size": None,
        "shared_expert_intermediate_size": None,
        "num_experts": config.n_experts,
        "num_experts_per_tok": config.experts_per_token,
        "moe_layer_freq": [1] * config.n_layers,
        "qk_layernorm": config.qk_norm,
        "moe_router_enable_expert_bias": config.expert_bias,
        "moe_router_score_function": "softmax",
        "norm_topk_prob": False,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rope_theta": config.rope_theta,
        "partial_rotary_factor": 1.0,
        "rope_scaling": None,
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "clip_qkv": None,
        "tie_word_embeddings": config.tie_embeddings,
        "mask_token_id": special.mask_token_id,
        "eos_token_id": special.eos_token_id,
        "pad_token_id": special.pad_token_id,
        "use_cache": False,
    }


def ours(released: str) -> str:
    """Our key for one released non-expert key (CheckpointError when the table has none)."""
    if released in _TOP:
        return _TOP[released]
    m = _LAYER_KEY.match(released)
    if m and m.group(2) in _LAYER:
        return f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}"
    raise CheckpointError(f"unexpected key: {released}")


def load_llada_moe_checkpoint(
    folder: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[LLaDAMoEBackbone, SpecialTokens]:
    """Load a released LLaDA-MoE folder into a new `LLaDAMoEBackbone` (built on meta, tensors assigned).

    Raises:
        CheckpointError: naming the missing, unexpected or mis-shaped keys, or an unsupported field.
    """
    folder = Path(folder)
    config, special = config_from_moe_json(folder)
    with torch.device("meta"):
        model = LLaDAMoEBackbone(config)
    files = shard_files(folder)
    state, unexpected, experts = {}, [], defaultdict(dict)
    for key, tensor in read_tensors(files, sorted(files)).items():
        if m := _EXPERT.match(key):
            experts[f"blocks.{m.group(1)}.moe.{m.group(3)}"][int(m.group(2))] = tensor
            continue
        try:
            state[ours(key)] = tensor
        except CheckpointError:
            unexpected.append(key)
    stacked, missing = stack_experts(experts, config.n_experts)
    assign_checked(model, {**state, **stacked}, folder, unexpected, missing, dtype, device)
    log.info(
        "loaded LLaDA-MoE %s (%.1fM parameters, %.1fM active)", folder, config.num_parameters() / 1e6,
        config.active_parameters() / 1e6,
    )  # fmt: skip
    return model, special


def released_state(model: LLaDAMoEBackbone) -> dict[str, torch.Tensor]:
    """`model`'s tensors under the released keys (experts split)."""
    inverse = {v: k for k, v in _TOP.items()}
    out = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        parts = key.split(".")
        if key in inverse:
            out[inverse[key]] = tensor.contiguous()
        elif parts[2] == "moe" and parts[3] in ("gate_proj", "up_proj", "down_proj"):
            for e in range(tensor.shape[0]):
                out[f"model.layers.{parts[1]}.mlp.experts.{e}.{parts[3]}.weight"] = tensor[e].contiguous()
        else:
            name = next(r for r, o in _LAYER.items() if o == ".".join(parts[2:]))
            out[f"model.layers.{parts[1]}.{name}"] = tensor.contiguous()
    return out


def save_llada_moe_checkpoint(
    model: LLaDAMoEBackbone, folder: str | Path, special: SpecialTokens | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:  # fmt: skip
    """Write `model` as a released-layout LLaDA-MoE folder (config.json, safetensors shards, index)."""
    special = special or SpecialTokens(mask_token_id=156895, eos_token_id=156892, pad_token_id=156892)
    config = moe_json_from_config(model.config, special)
    return write_folder(released_state(model), config, Path(folder), max_shard_bytes)
