"""Released LLaDA-V / LLaDA-MedV folders (``LlavaLLaDAModelLM``): our model, tokenizer and prompt for them.

A folder holds config.json (LLaMA field names plus LLaVA's ``mm_*`` ones), safetensors shards and the
LLaDA tokenizer. Its tensors map onto ours by name:

* the language model is LLaMA-laid-out (``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
  ``model.layers.N.mlp.{gate,up,down}_proj``, ``input_layernorm`` / ``post_attention_layernorm``,
  ``model.norm``, ``lm_head``): the same rotate-half RoPE, RMSNorm and SwiGLU as our backbone, without
  the causal mask, so the table below is a renaming;
* ``model.vision_tower.vision_tower.vision_model.*`` is the SigLIP tower (its 26 layers, encoders/llada_v.py);
* ``model.mm_projector.{0,2}`` and ``model.image_newline`` are the ``llava_anyres`` projector's.

Every tensor must be used and every parameter filled: missing, unexpected and mis-shaped keys are named
together. config.json flags our code does not implement are refused by name (a projector other than
mlp2x_gelu, a merge type other than spatial_unpad, an aspect mode other than anyres / anyres_max_N,
biases, RoPE scaling, another activation). The release cuts prompts longer than
``tokenizer_model_max_length`` silently; here the backbone's max_seq_len (the config's
max_position_embeddings) refuses them.

Prompts follow the ``llava_llada`` conversation: the system message below, the tokenizer's chat template
(LLaDA's), and the image placeholder at the start of the first user message followed by a newline. When
decoding, BOS, EOS and the two header tokens are never proposed at masked positions (the release sets
their logits to -inf); answers end at ``<|eot_id|>``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from encoders.base import ModalityAdapter
from encoders.llada_v import AnyresProjector, LLaDAVTower, tower_config
from encoders.weights import raise_key_problems
from multimodal.backbone.config import BackboneConfig
from multimodal.backbone.released import CheckpointError, read_tensors, shard_files
from multimodal.backbone.transformer import LLaDABackbone
from multimodal.collate import expand_placeholders, stack_items
from multimodal.model import MultimodalDiffusionModel
from multimodal.sampling.base import SamplerConfig
from multimodal.types import PromptBatch

log = logging.getLogger(__name__)

ARCHITECTURE = "LlavaLLaDAModelLM"
IMAGE_TOKEN = "<image>"
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
# never proposed at masked positions: BOS, EOS, start / end of a header (the release's 126080, 126081,
# 126346, 126347 in LLaDA's vocabulary)
SUPPRESSED = ("<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>")

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
LM_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
LM_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q_proj.weight",
    "self_attn.k_proj.weight": "k_proj.weight",
    "self_attn.v_proj.weight": "v_proj.weight",
    "self_attn.o_proj.weight": "attn_out.weight",
    "post_attention_layernorm.weight": "ff_norm.weight",
    "mlp.gate_proj.weight": "ff_proj.weight",
    "mlp.up_proj.weight": "up_proj.weight",
    "mlp.down_proj.weight": "ff_out.weight",
}
LM_NAMES = {
    "model.embed_tokens.weight": "wte.weight",
    "model.norm.weight": "ln_f.weight",
    "lm_head.weight": "ff_out.weight",
}
PROJECTOR_NAMES = {
    "model.mm_projector.0.weight": "mlp.0.weight",
    "model.mm_projector.0.bias": "mlp.0.bias",
    "model.mm_projector.2.weight": "mlp.2.weight",
    "model.mm_projector.2.bias": "mlp.2.bias",
    "model.image_newline": "image_newline",
}
# config.json values our code implements (anything else is refused by name)
REQUIRED = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "rope_scaling": None,
    "mm_projector_type": "mlp2x_gelu",
    "mm_patch_merge_type": "spatial_unpad",
}


def is_llada_v(folder: str | Path) -> bool:
    """Whether `folder`'s config.json describes a LLaDA-V model."""
    file = Path(folder) / "config.json"
    if not file.is_file():
        return False
    cfg = json.loads(file.read_text())
    return ARCHITECTURE in (cfg.get("architectures") or []) or cfg.get("model_type") == "llava_llada"


def read_config(folder: Path) -> tuple[BackboneConfig, dict[str, Any]]:
    """The backbone config and the image layout (pinpoints, max_tiles) of a LLaDA-V config.json."""
    file = folder / "config.json"
    if not file.is_file():
        raise CheckpointError(f"no config.json at {file}")
    cfg = json.loads(file.read_text())
    for key, value in REQUIRED.items():
        if cfg.get(key, value) != value:
            raise CheckpointError(f"{file}: {key}={cfg[key]!r} is not supported (mmdiff implements {value!r})")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key not in cfg:
            raise CheckpointError(f"{file}: missing required field '{key}'")
    aspect = cfg.get("image_aspect_ratio", "anyres_max_4")
    found = re.fullmatch(r"anyres(?:_max_(\d+))?", str(aspect))
    if found is None:
        raise CheckpointError(f"{file}: image_aspect_ratio={aspect!r} is not supported (anyres or anyres_max_N)")
    backbone = BackboneConfig(
        name=folder.name,
        d_model=int(cfg["hidden_size"]),
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=int(cfg["num_attention_heads"]),
        n_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        mlp_hidden=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        max_seq_len=int(cfg.get("max_position_embeddings", 8192)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    # plain "anyres" never shrinks the grid: as many tiles as the largest resolution holds
    layout = {
        "pinpoints": cfg.get("image_grid_pinpoints", "(1x1),...,(6x6)"),
        "max_tiles": int(found.group(1)) if found.group(1) else None,
    }
    return backbone, layout


def _target(key: str) -> tuple[str, str] | None:
    """(part, our key) for a release key, or None."""
    if key in LM_NAMES:
        return "backbone", LM_NAMES[key]
    if m := LM_LAYER.fullmatch(key):
        name = LM_LAYER_NAMES.get(m.group(2))
        return ("backbone", f"blocks.{m.group(1)}.{name}") if name else None
    if key.startswith(VISION_PREFIX):
        return "tower", key[len(VISION_PREFIX) :]
    if key in PROJECTOR_NAMES:
        return "projector", PROJECTOR_NAMES[key]
    return None


def _release_key(part: str, ours: str) -> str:
    """The release's name of one of our keys (to name what a checkpoint lacks)."""
    if part == "tower":
        return VISION_PREFIX + ours
    if part == "projector":
        return {v: k for k, v in PROJECTOR_NAMES.items()}[ours]
    if m := re.fullmatch(r"blocks\.(\d+)\.(.+)", ours):
        return f"model.layers.{m.group(1)}." + {v: k for k, v in LM_LAYER_NAMES.items()}[m.group(2)]
    return {v: k for k, v in LM_NAMES.items()}[ours]


def load_llada_v(
    folder: str | Path, dtype: torch.dtype | None = None, device: Any = "cpu", vision_heads: int = 16
) -> tuple[MultimodalDiffusionModel, Any]:
    """A LLaDA-V folder as our model and its tokenizer (with the ``<image>`` placeholder added).

    Args:
        folder: the released folder (config.json, safetensors shards, tokenizer files).
        dtype: cast the weights (default: as stored).
        device: where the weights go.
        vision_heads: the tower's attention heads (not stored in the tensors; so400m has 16).

    Raises:
        CheckpointError: an unsupported config flag, or the missing / unexpected / mis-shaped keys.
    """
    from multimodal.tokenizer import HFTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"LLaDA-V folder not found: {folder}")
    backbone_config, layout = read_config(folder)
    files = shard_files(folder)
    parts: dict[str, dict[str, str]] = {"backbone": {}, "tower": {}, "projector": {}}
    unused = []
    for key in files:
        target = _target(key)
        if target is None:
            if not key.endswith("rotary_emb.inv_freq"):  # a recomputed buffer older exports store
                unused.append(key)
            continue
        parts[target[0]][key] = target[1]
    tensors = read_tensors(files, [k for part in parts.values() for k in part])
    tower_state = {parts["tower"][k]: tensors[k] for k in parts["tower"]}
    config = tower_config(tower_state, vision_heads, str(folder))
    max_tiles = layout["max_tiles"]
    with torch.device("meta"):  # the 8B backbone costs one copy of its weights
        backbone = LLaDABackbone(backbone_config)
    tower = LLaDAVTower(config, pinpoints=layout["pinpoints"], max_tiles=max_tiles or 10**6)
    projector = AnyresProjector(config.hidden_size, backbone_config.d_model)
    modules = {"backbone": backbone, "tower": tower.inner, "projector": projector}
    missing, wrong = [], []
    for part, module in modules.items():
        expected = module.state_dict()
        ours = {ours: tensors[theirs] for theirs, ours in parts[part].items()}
        missing += [_release_key(part, k) for k in sorted(set(expected) - set(ours))]
        unused += [theirs for theirs, k in parts[part].items() if k not in expected]
        wrong += [
            f"{theirs} {tuple(tensors[theirs].shape)} (expected {tuple(expected[ours].shape)})"
            for theirs, ours in parts[part].items()
            if ours in expected and tuple(tensors[theirs].shape) != tuple(expected[ours].shape)
        ]
    raise_key_problems(
        str(folder),
        (("missing keys", sorted(missing)), ("unexpected keys", sorted(unused)), ("mis-shaped keys", wrong)),
    )
    for part, module in modules.items():
        state = {ours: tensors[theirs] for theirs, ours in parts[part].items()}
        if part == "backbone":
            state = {k: t.to(device=device, dtype=dtype or t.dtype) for k, t in state.items()}
            module.load_state_dict(state, strict=True, assign=True)
        else:
            module.load_state_dict(state, strict=True)
            module.to(device=device, dtype=dtype)
    tokenizer = HFTokenizer(folder)
    tokenizer.add_specials([IMAGE_TOKEN])
    image_id = tokenizer.token_id(IMAGE_TOKEN)
    if image_id >= backbone_config.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer fills all {backbone_config.vocab_size} embedding rows, "
            f"leaving no id for {IMAGE_TOKEN}"
        )
    model = MultimodalDiffusionModel(backbone, {"image": ModalityAdapter(tower, projector)}, {"image": image_id})
    log.info("loaded LLaDA-V %s (%.2fB parameters)", folder, sum(p.numel() for p in model.parameters()) / 1e9)
    return model, tokenizer


def sampler_defaults(tokenizer: Any, base: SamplerConfig) -> SamplerConfig:
    """`base` with the release's suppressed tokens (those the tokenizer has) added to forbid_ids."""
    vocab = tokenizer.tok.get_vocab()
    ids = sorted(set(base.forbid_ids) | {vocab[t] for t in SUPPRESSED if t in vocab})
    return replace(base, forbid_ids=ids)


def conversation(messages: list[dict[str, str]], images: int) -> list[dict[str, str]]:
    """The ``llava_llada`` conversation: its system message unless one is given, and the image
    placeholders at the start of the first user message (one: ``<image>\\n`` + text; several: one per image)."""
    messages = [dict(m) for m in messages]
    if not messages or messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": SYSTEM})
    if images:
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise ValueError("images need a user message to go with")
        text = first["content"].replace(IMAGE_TOKEN, "").strip()
        first["content"] = (IMAGE_TOKEN + "\n" if images == 1 else IMAGE_TOKEN * images) + text
    return messages


def prompt_batch(
    model: MultimodalDiffusionModel, tokenizer: Any, messages: list[dict[str, str]], images: list
) -> PromptBatch:
    """One conversation with its images (paths, bytes or PIL images) as a batch the engine decodes."""
    from multimodal.chat import chat_prompt_ids

    io = model.modality_io()["image"]
    ids = chat_prompt_ids(tokenizer, conversation(messages, len(images)))
    items = [io.preprocess(image) for image in images]
    ids, _ = expand_placeholders(ids, io.placeholder_id, [int(io.num_tokens(x)) for x in items])
    stacked = stack_items([items])
    if stacked is None:
        return PromptBatch([ids])
    return PromptBatch([ids], {"image": stacked[0]}, {"image": stacked[1]})
