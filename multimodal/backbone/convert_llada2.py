"""Read and write LLaDA2 checkpoints in their released Hugging Face layout (``model_type: "llada2_moe"``).

Key table (N a layer, E an expert; the fused projection is split by heads: query heads, key heads,
value heads, in that order):

    model.word_embeddings                          wte
    model.layers.N.input_layernorm                 blocks.N.attn_norm
    model.layers.N.attention.query_key_value       blocks.N.{q,k,v}_proj        (weight, bias if any)
    model.layers.N.attention.query_layernorm       blocks.N.q_norm
    model.layers.N.attention.key_layernorm         blocks.N.k_norm
    model.layers.N.attention.dense                 blocks.N.attn_out            (weight, bias if any)
    model.layers.N.post_attention_layernorm        blocks.N.ff_norm
    model.layers.N.mlp.{gate,up,down}_proj         blocks.N.{ff_proj,up_proj,ff_out}   (dense layers)
    model.layers.N.mlp.gate.weight                 blocks.N.moe.router.weight
    model.layers.N.mlp.gate.expert_bias            blocks.N.moe.expert_bias
    model.layers.N.mlp.experts.E.{gate,up,down}_proj   blocks.N.moe.{gate,up,down}_proj[E]
    model.layers.N.mlp.shared_experts.{gate,up,down}_proj   blocks.N.shared.{ff_proj,up_proj,ff_out}
    model.norm                                     ln_f
    lm_head                                        ff_out

Config fields the backbone does not implement are refused by name (a router other than sigmoid, no
q / k norm, rope scaling, a head_dim other than hidden_size / heads).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import torch

from multimodal.backbone.llada2 import LLaDA2Backbone, LLaDA2Config
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

LLADA2_SPECIAL = SpecialTokens(mask_token_id=156895, eos_token_id=156892, pad_token_id=156892)
_TOP = {
    "model.word_embeddings.weight": "wte.weight",
    "model.norm.weight": "ln_f.weight",
    "lm_head.weight": "ff_out.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ff_norm.weight",
    "attention.query_layernorm.weight": "q_norm.weight",
    "attention.key_layernorm.weight": "k_norm.weight",
    "attention.dense.weight": "attn_out.weight",
    "attention.dense.bias": "attn_out.bias",
    "mlp.gate_proj.weight": "ff_proj.weight",
    "mlp.up_proj.weight": "up_proj.weight",
    "mlp.down_proj.weight": "ff_out.weight",
    "mlp.gate.weight": "moe.router.weight",
    "mlp.gate.expert_bias": "moe.expert_bias",
    "mlp.shared_experts.gate_proj.weight": "shared.ff_proj.weight",
    "mlp.shared_experts.up_proj.weight": "shared.up_proj.weight",
    "mlp.shared_experts.down_proj.weight": "shared.ff_out.weight",
}
_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"model\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)$")
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)$")


def is_llada2(folder: Path) -> bool:
    """Whether `folder` holds a released LLaDA2 config.json."""
    file = folder / "config.json"
    return file.is_file() and json.loads(file.read_text()).get("model_type") == "llada2_moe"


def config_from_llada2_json(folder: Path) -> tuple[LLaDA2Config, SpecialTokens]:
    """Our config and the special ids of a released LLaDA2 config.json."""
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_experts",
            "num_experts_per_tok", "moe_intermediate_size", "intermediate_size")  # fmt: skip
    for key in need:
        if cfg.get(key) is None:
            raise CheckpointError(f"{file}: missing required field '{key}'")
    d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if cfg.get("head_dim") not in (None, d // heads):
        raise CheckpointError(f"{file}: head_dim={cfg['head_dim']} is not hidden_size / num_attention_heads")
    if str(cfg.get("score_function", "sigmoid")) != "sigmoid":
        raise CheckpointError(f"{file}: score_function={cfg['score_function']!r} is not supported (sigmoid)")
    if cfg.get("use_qk_norm") is False:
        raise CheckpointError(f"{file}: use_qk_norm=false is not supported")
    if cfg.get("rope_scaling") is not None:
        raise CheckpointError(f"{file}: rope_scaling={cfg['rope_scaling']!r} is not supported")
    config = LLaDA2Config(
        name=folder.name,
        d_model=d,
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        mlp_hidden=int(cfg["moe_intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        max_seq_len=int(cfg.get("max_position_embeddings", 32768)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        n_experts=int(cfg["num_experts"]),
        experts_per_token=int(cfg["num_experts_per_tok"]),
        dense_hidden=int(cfg["intermediate_size"]),
        first_dense_layers=int(cfg.get("first_k_dense_replace", 0)),
        shared_experts=int(cfg.get("num_shared_experts") or 0),
        n_group=int(cfg.get("n_group") or 1),
        topk_group=int(cfg.get("topk_group") or 1),
        routed_scaling=float(cfg.get("routed_scaling_factor", 1.0)),
        rotary_fraction=float(cfg.get("partial_rotary_factor", 1.0)),
        qkv_bias=bool(cfg.get("use_qkv_bias", False)),
        out_bias=bool(cfg.get("use_bias", False)),
    )
    d0 = LLADA2_SPECIAL
    special = SpecialTokens(
        mask_token_id=int(cfg.get("mask_token_id", d0.mask_token_id)),
        eos_token_id=int(cfg.get("eos_token_id", d0.eos_token_id)),
        pad_token_id=int(cfg.get("pad_token_id", d0.pad_token_id)),
    )
    return config, special


def llada2_json_from_config(config: LLaDA2Config, special: SpecialTokens) -> dict:
    """The config.json the released modelling file reads, for our config."""
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "model_type": "llada2_moe",
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.dense_hidden,
        "moe_intermediate_size": config.mlp_hidden,
        "num_experts": config.n_experts,
        "num_experts_per_tok": config.experts_per_token,
        "num_shared_experts": config.shared_experts or None,
        "first_k_dense_replace": config.first_dense_layers,
        "n_group": config.n_group,
        "topk_group": config.topk_group,
        "routed_scaling_factor": config.routed_scaling,
        "score_function": "sigmoid",
        "norm_topk_prob": True,
        "moe_router_enable_expert_bias": True,
        "use_qk_norm": True,
        "partial_rotary_factor": config.rotary_fraction,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": config.rms_norm_eps,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "use_qkv_bias": config.qkv_bias,
        "use_bias": config.out_bias,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "mask_token_id": special.mask_token_id,
        "eos_token_id": special.eos_token_id,
        "pad_token_id": special.pad_token_id,
    }


def load_llada2_checkpoint(
    folder: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[LLaDA2Backbone, SpecialTokens]:
    """Load a released LLaDA2 folder into a new `LLaDA2Backbone` (built on meta, tensors assigned).

    Raises:
        CheckpointError: naming the missing, unexpected or mis-shaped keys, or an unsupported field.
    """
    folder = Path(folder)
    config, special = config_from_llada2_json(folder)
    with torch.device("meta"):
        model = LLaDA2Backbone(config)
    q, kv = config.d_model, config.kv_heads * config.head_dim
    files = shard_files(folder)
    state, unexpected, experts = {}, [], defaultdict(dict)
    for key, tensor in read_tensors(files, sorted(files)).items():
        if key in _TOP:
            state[_TOP[key]] = tensor
        elif m := _FUSED.match(key):
            if tensor.shape[0] != q + 2 * kv:
                raise CheckpointError(f"{folder}: mis-shaped keys: {key} {tuple(tensor.shape)} (rows {q + 2 * kv})")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q, kv, kv]), strict=True):
                state[f"blocks.{m.group(1)}.{name}.{m.group(2)}"] = part
        elif m := _EXPERT.match(key):
            experts[f"blocks.{m.group(1)}.moe.{m.group(3)}"][int(m.group(2))] = tensor
        elif (m := _LAYER_KEY.match(key)) and m.group(2) in _LAYER:
            state[f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}"] = tensor
        else:
            unexpected.append(key)
    stacked, missing = stack_experts(experts, config.n_experts)
    assign_checked(model, {**state, **stacked}, folder, unexpected, missing, dtype, device)
    log.info(
        "loaded LLaDA2 %s (%.1fM parameters, %.1fM active)", folder, config.num_parameters() / 1e6,
        config.active_parameters() / 1e6,
    )  # fmt: skip
    return model, special


def save_llada2_checkpoint(
    model: LLaDA2Backbone, folder: str | Path, special: SpecialTokens = LLADA2_SPECIAL,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:  # fmt: skip
    """Write `model` as a released-layout LLaDA2 folder (config.json, safetensors shards, index)."""
    inverse_top = {v: k for k, v in _TOP.items()}
    inverse = {v: k for k, v in _LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for key, tensor in state.items():
        if key in inverse_top:
            out[inverse_top[key]] = tensor.contiguous()
            continue
        _, i, rest = key.split(".", 2)
        prefix = f"model.layers.{i}."
        if rest.startswith(("q_proj.", "k_proj.", "v_proj.")):
            if rest.startswith("q_proj."):
                kind = rest.split(".")[1]
                parts = [state[f"blocks.{i}.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
                out[f"{prefix}attention.query_key_value.{kind}"] = torch.cat(parts).contiguous()
        elif rest.startswith("moe.") and rest.split(".")[1] in ("gate_proj", "up_proj", "down_proj"):
            for e in range(tensor.shape[0]):
                out[f"{prefix}mlp.experts.{e}.{rest.split('.')[1]}.weight"] = tensor[e].contiguous()
        else:
            out[prefix + inverse[rest]] = tensor.contiguous()
    return write_folder(out, llada2_json_from_config(model.config, special), Path(folder), max_shard_bytes)
