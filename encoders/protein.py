"""Protein language models: ESM2 built with fair-esm (weights from local fair-esm files or Hugging
Face ESM folders), and encoders over any local BERT / ESM-style masked LM (transformers).

ESM2 is built with token dropout off: ESM's token dropout rescales embeddings as if 12% of tokens
were masked, which is wrong for a diffusion model that sees every mask rate (DSM, PAPERS.md
section 5). The one exception is a released DSM folder whose config turns it on: the released model
computes with it, so reproducing it needs it (an explicit `token_dropout` overrides either way).
Presets cover a tiny test shape and the released 8M / 35M / 150M / 650M shapes.
Hugging Face ESM checkpoints are mapped onto fair-esm's parameter names by a fixed table, so both
sources give the same model. Everything loads from local paths with safe loaders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoders.base import ENCODERS, EncoderSpec, ModalityEncoder, SequenceFeatures, TokenCount
from encoders.weights import load_into, load_state_dict
from multimodal.safeio import read_pickle

# name -> (layers, width, heads), the released ESM2 shapes plus test and CPU-demo sizes
ESM_PRESETS: dict[str, tuple[int, int, int]] = {
    "esm2_tiny": (2, 64, 4),
    "esm2_small": (4, 192, 6),
    "esm2_t6_8m": (6, 320, 20),
    "esm2_t12_35m": (12, 480, 20),
    "esm2_t30_150m": (30, 640, 20),
    "esm2_t33_650m": (33, 1280, 20),
}

_HF_TO_ESM = [
    (r"^esm\.embeddings\.word_embeddings\.", "embed_tokens."),
    (r"^esm\.encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^esm\.encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^esm\.encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^esm\.encoder\.layer\.(\d+)\.attention\.self\.rotary_embeddings\.", r"layers.\1.self_attn.rot_emb."),
    (r"^esm\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
    (r"^esm\.encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
    (r"^esm\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"^esm\.encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"^esm\.encoder\.layer\.(\d+)\.LayerNorm\.", r"layers.\1.final_layer_norm."),
    (r"^esm\.encoder\.emb_layer_norm_after\.", "emb_layer_norm_after."),
    (r"^esm\.contact_head\.", "contact_head."),
    (r"^lm_head\.", "lm_head."),
]


def alphabet():
    import esm

    return esm.data.Alphabet.from_architecture("ESM-1b")


def build_esm2(layers: int, width: int, heads: int, token_dropout: bool = False) -> nn.Module:
    """A fair-esm ESM2, token dropout off unless asked (module docstring)."""
    from esm.model.esm2 import ESM2

    return ESM2(
        num_layers=layers, embed_dim=width, attention_heads=heads, alphabet=alphabet(), token_dropout=token_dropout
    )


def hf_to_esm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face EsmForMaskedLM state dict, or a released DSM one (FastESM body ``esm.*``, a
    pooler the LM never uses, an LM head whose decoder carries the bias and shares the embedding
    matrix), to fair-esm's names. The tied decoder weight is dropped, after checking that it is tied."""
    state = dict(state)
    embed, decoder = state.get("esm.embeddings.word_embeddings.weight"), state.pop("lm_head.decoder.weight", None)
    if embed is None and decoder is not None:  # a shared tensor saved once, under the decoder's name
        state["esm.embeddings.word_embeddings.weight"] = decoder
    elif decoder is not None and not torch.equal(embed, decoder):
        raise ValueError("lm_head.decoder.weight differs from the token embeddings (ESM2 and DSM tie them)")
    if "lm_head.decoder.bias" in state:  # DSM's decoder holds the output bias that ESM keeps as lm_head.bias
        if "lm_head.bias" in state:
            raise ValueError("both lm_head.bias and lm_head.decoder.bias: which output bias is meant is unclear")
        state["lm_head.bias"] = state.pop("lm_head.decoder.bias")
    out = {}
    for key, value in state.items():
        if key == "esm.embeddings.position_ids" or key.startswith(("esm.pooler.", "pooler.")):
            continue
        if "rotary_embeddings.inv_freq" in key:  # a fixed buffer (saved under a wildcard name by some versions)
            continue
        new = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        for pattern, repl in _HF_TO_ESM:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        else:
            raise ValueError(f"unexpected key in a Hugging Face ESM checkpoint: {key}")
        out[new] = value
    return out


def load_esm2(weights: str | Path, token_dropout: bool | None = None) -> nn.Module:
    """ESM2 from a local fair-esm checkpoint file (.pt, read with weights_only), a Hugging Face ESM folder
    or a released DSM folder (``GleghornLab/DSM_150``, ``DSM_650``, ``Synthyra/DSM_ppi_full``: config.json
    with model_type ``dsm``).

    Args:
        weights: the file or folder.
        token_dropout: ESM's token-dropout rescaling of the embeddings. None: as a DSM folder's config says
            (the released model computes with it), off for everything else (module docstring).
    """
    path = Path(weights)
    if path.is_dir():
        import json

        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no config.json in ESM folder {path}")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("position_embedding_type", "rotary") != "rotary" or cfg.get("emb_layer_norm_before"):
            raise ValueError(f"{path}: only ESM2-style checkpoints (rotary, no embedding layer norm) are supported")
        if token_dropout is None:
            token_dropout = cfg.get("model_type") == "dsm" and bool(cfg.get("token_dropout", False))
        layers, width, heads = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
        model = build_esm2(layers, width, heads, token_dropout)
        state = hf_to_esm(load_state_dict(path))
    else:
        if not path.is_file():
            raise FileNotFoundError(f"ESM checkpoint not found: {path} (weights load from local paths only)")
        data = read_pickle(path)  # refused or corrupt: one error naming the file
        state = data.get("model", data) if isinstance(data, dict) else data
        state = {k.removeprefix("encoder.sentence_encoder.").removeprefix("encoder."): v for k, v in state.items()}
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
        width = state["embed_tokens.weight"].shape[1]
        heads = next((h for name, (n, w, h) in ESM_PRESETS.items() if (n, w) == (layers, width)), max(1, width // 64))
        model = build_esm2(layers, width, heads, bool(token_dropout))
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own}  # fair-esm files carry trainer leftovers
    state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    for key, value in model.state_dict().items():
        if key.endswith("rot_emb.inv_freq"):  # computed from the shape, identical in every checkpoint
            state.setdefault(key, value)
    load_into(model, state, str(path))
    return model


class ESMEncoder(ModalityEncoder):
    """ESM2 representations of a protein (shared-backbone mode): features (B, L, C) of a layer."""

    modality = "protein"

    def __init__(self, model: nn.Module, layer: int = -1, weights: str | None = None, max_length: int = 1024):
        super().__init__()
        self.model, self.layer = model, layer
        self.output_dim = model.embed_dim
        self.alphabet = model.alphabet
        self.spec = EncoderSpec(weights, {"max_length": max_length})

    def preprocess(self, raw: Any) -> torch.Tensor:
        seq = str(raw).upper()
        max_length = int(self.spec.preprocess["max_length"])
        if len(seq) + 2 > max_length:
            raise ValueError(f"protein of {len(seq)} residues exceeds the encoder's {max_length} tokens")
        ids = [self.alphabet.cls_idx] + [self.alphabet.get_idx(c) for c in seq] + [self.alphabet.eos_idx]
        return torch.tensor(ids, dtype=torch.float32)  # stacked with zero (= cls) padding, see forward

    def num_tokens(self, inputs: torch.Tensor | None = None) -> TokenCount:
        if inputs is None:
            raise ValueError("protein token counts depend on the sequence: pass it")
        return TokenCount(int(inputs.numel()), int(inputs.numel()))

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> SequenceFeatures:
        tokens = inputs.long()
        lengths = (tokens == self.alphabet.eos_idx).float().argmax(-1) + 1  # through the first <eos>
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
        tokens = torch.where(valid, tokens, torch.full_like(tokens, self.alphabet.padding_idx))
        index = self.layer % (self.model.num_layers + 1)
        out = self.model(tokens, repr_layers=[index])
        return SequenceFeatures((out["representations"][index],), lengths)

    def lock(self, unlocked_groups: int = 0) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        for layer in list(self.model.layers)[len(self.model.layers) - unlocked_groups :] if unlocked_groups else []:
            for p in layer.parameters():
                p.requires_grad_(True)


class MaskedLMEncoder(ModalityEncoder):
    """Hidden states of a local Hugging Face BERT / ESM-style masked LM (e.g. AntiBERTy), one per residue."""

    modality = "protein"

    def __init__(self, folder: str, layer: int = -1, vocab: str | None = None):
        from transformers import AutoConfig, AutoModelForMaskedLM

        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"masked LM folder not found: {path} (weights load from local paths only)")
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        self_model = AutoModelForMaskedLM.from_config(config)
        load_into(self_model, _bert_state(load_state_dict(path), self_model), str(path))
        super().__init__()
        self.model, self.layer = self_model.eval(), layer
        self.output_dim = config.hidden_size
        vocab_file = Path(vocab) if vocab else path / "vocab.txt"
        if not vocab_file.is_file():
            raise FileNotFoundError(f"no vocabulary file {vocab_file}")
        self.vocab = {tok: i for i, tok in enumerate(vocab_file.read_text().split())}
        self.spec = EncoderSpec(str(path), {"vocab": str(vocab_file)})

    def token_ids(self, seq: str) -> list[int]:
        unk = self.vocab.get("[UNK]", 1)
        return (
            [self.vocab.get("[CLS]", 2)] + [self.vocab.get(c, unk) for c in seq.upper()] + [self.vocab.get("[SEP]", 3)]
        )

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(input_ids=inputs.long(), attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[self.layer]

    def masked_lm(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def _bert_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep the keys a BertForMaskedLM has (checkpoints of subclasses carry extra heads)."""
    expected = model.state_dict()
    out = {k: v for k, v in state.items() if k in expected}
    for key in expected:  # tied decoder weight and buffers the checkpoint may omit
        if key not in out and key.endswith("decoder.weight") and "bert.embeddings.word_embeddings.weight" in state:
            out[key] = state["bert.embeddings.word_embeddings.weight"]
        elif key not in out and (key.endswith("position_ids") or key.endswith("token_type_ids")):
            out[key] = expected[key]
        elif key not in out and key.endswith("decoder.bias") and "cls.predictions.bias" in state:
            out[key] = state["cls.predictions.bias"]
    return out


@ENCODERS.register("esm2")
def esm2(preset: str = "esm2_t6_8m", weights: str | None = None, layer: int = -1) -> ESMEncoder:
    """ESM2 representations (random weights of a preset shape, or local weights)."""
    if weights:
        return ESMEncoder(load_esm2(weights), layer, weights)
    if preset not in ESM_PRESETS:
        raise KeyError(f"unknown ESM2 preset '{preset}' (known: {', '.join(ESM_PRESETS)})")
    return ESMEncoder(build_esm2(*ESM_PRESETS[preset]), layer)


@ENCODERS.register("esm2_tiny")
def esm2_tiny(layer: int = -1) -> ESMEncoder:
    return ESMEncoder(build_esm2(*ESM_PRESETS["esm2_tiny"]), layer)


@ENCODERS.register("masked_lm")
def masked_lm(weights: str, layer: int = -1, vocab: str | None = None) -> MaskedLMEncoder:
    """A local BERT / ESM-style masked protein LM (for example AntiBERTy's released weights)."""
    return MaskedLMEncoder(weights, layer, vocab)
