"""Backbone families: how a run's diffusion backbone is built, one registered class per family.

A family names the experiment config section that holds its settings and the settings class it reads,
builds the bare backbone (fresh, or from a released folder), says whether modality adapters, LoRA,
per-part freezing and sequence packing apply on top (multimodal/train/build.py does those for every
family that takes them) and checks its vocabulary against the run's tokenizer. A run's family is the one
whose own section the config sets (``dsm:``), else the one whose settings class the ``backbone:``
section resolved to (its preset's class), so a new family is its module (config, presets, checkpoint
key table, network) plus its class here: no `if` on a family in the application layer.

* ``llada``: the LLaDA-architecture dense bidirectional transformer (`backbone:`, BackboneConfig
  presets ``llada_tiny`` ... ``llada_8b``); a released LLaDA folder in `init_from` is converted.
* ``llada_moe``: LLaDA-MoE, the same blocks with routed SwiGLU experts and query / key norms
  (`backbone:` with a MoEBackboneConfig preset, ``llada_tiny_moe``, ``llada_moe_7b``; backbone/moe.py);
  a released LLaDA-MoE folder in `init_from` is converted (backbone/convert_moe.py).
* ``dream``: Dream, Qwen2's layout made bidirectional with its one-position logit shift inside the
  backbone (`backbone:` with a DreamConfig preset, ``dream_tiny``, ``dream_7b``; backbone/dream.py); a
  released Dream folder in `init_from` is converted (backbone/convert_dream.py).
* ``llada2``: LLaDA2, the block-diffusion MoE (dense first layers, sigmoid group-limited routing with
  shared experts, fused q / k / v, partial rotary; `backbone:` with an LLaDA2Config preset,
  ``llada2_tiny``; backbone/llada2.py); a released folder in `init_from` is converted
  (backbone/convert_llada2.py). Train it as block diffusion (`diffusion.block_size`).
* ``dsm``: ESM2 with DSM's capped LM head (`dsm:`, backbone/esm.py); the protein is the vocabulary,
  no adapters, no packing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from multimodal.backbone.config import BackboneConfig
from multimodal.backbone.dream import DreamConfig
from multimodal.backbone.esm import DSMModelConfig
from multimodal.backbone.llada2 import LLaDA2Config
from multimodal.backbone.moe import MoEBackboneConfig
from multimodal.registry import new_registry

log = logging.getLogger(__name__)

FAMILIES = new_registry("backbone_family", "backbone family")


class BackboneFamily:
    """Base: one family of diffusion backbones (module docstring).

    Attributes:
        section: the experiment config key holding this family's settings.
        settings: the settings class that section holds.
        takes_modalities: modality adapters, LoRA and per-part freezing apply to it.
        packs: it takes packed rows (per-document attention; train.pack_length).
    """

    section: ClassVar[str]
    settings: ClassVar[type]
    takes_modalities: ClassVar[bool] = True
    packs: ClassVar[bool] = True

    def build(self, settings: Any, source: Path | None) -> nn.Module:
        """The backbone, fresh or converted from `source` when it is a released folder (`converts`)."""
        raise NotImplementedError

    def converts(self, source: Path) -> bool:
        """Whether `build` reads `init_from` itself (a released folder); else it is one of our run or
        checkpoint folders, loaded into the assembled model."""
        return False

    def check_vocabulary(self, settings: Any, tokens: int) -> None:
        """ValueError when a tokenizer of `tokens` ids does not fit the backbone."""


@FAMILIES.register("llada")
class LLaDAFamily(BackboneFamily):
    section, settings = "backbone", BackboneConfig

    def converts(self, source: Path) -> bool:
        return (source / "config.json").is_file()  # a released LLaDA folder

    def build(self, settings: BackboneConfig, source: Path | None) -> nn.Module:
        from multimodal.backbone.convert import load_llada_checkpoint
        from multimodal.backbone.transformer import create_backbone

        if source is None or not self.converts(source):
            return create_backbone(settings)
        backbone, _ = load_llada_checkpoint(source)
        c = backbone.config
        if type(c) is not type(settings):
            raise ValueError(
                f"init_from {source} holds a {type(c).__name__} backbone but the experiment's preset "
                f"'{settings.name}' is a {type(settings).__name__}: choose a preset of that family"
            )
        if (c.vocab_size, c.d_model) != (settings.vocab_size, settings.d_model):
            raise ValueError(f"init_from {source} has shape {c} but the experiment asks for {settings}")
        log.info(
            "backbone initialised from the LLaDA folder %s: %.2fM parameters (%d layers x %d wide, vocab %d)",
            source, sum(p.numel() for p in backbone.parameters()) / 1e6, c.n_layers, c.d_model, c.vocab_size,
        )  # fmt: skip
        return backbone

    def check_vocabulary(self, settings: BackboneConfig, tokens: int) -> None:
        if tokens > settings.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokens} tokens but backbone.vocab_size is {settings.vocab_size}; "
                f"set backbone.vocab_size >= {tokens}"
            )


@FAMILIES.register("llada_moe")
class LLaDAMoEFamily(LLaDAFamily):
    """LLaDA-MoE: built, converted and checked as dense LLaDA (create_backbone and load_llada_checkpoint
    pick the MoE network by the settings class and the folder's fields)."""

    settings = MoEBackboneConfig


@FAMILIES.register("dream")
class DreamFamily(LLaDAFamily):
    """Dream: built, converted and checked as dense LLaDA (the network is picked by the settings class, a
    released folder by its model_type)."""

    settings = DreamConfig


@FAMILIES.register("llada2")
class LLaDA2Family(LLaDAFamily):
    """LLaDA2: built, converted and checked as dense LLaDA (network by settings class, folder by model_type)."""

    settings = LLaDA2Config


@FAMILIES.register("dsm")
class DSMFamily(BackboneFamily):
    section, settings = "dsm", DSMModelConfig
    takes_modalities = packs = False

    def build(self, settings: DSMModelConfig, source: Path | None) -> nn.Module:
        from encoders.protein import ESM_PRESETS, build_esm2, load_esm2
        from multimodal.backbone.esm import ESMDiffusion

        if settings.weights:
            body = load_esm2(settings.weights, settings.token_dropout)
        elif settings.preset in ESM_PRESETS:
            body = build_esm2(*ESM_PRESETS[settings.preset], token_dropout=bool(settings.token_dropout))
        else:
            raise ValueError(f"unknown ESM2 preset '{settings.preset}' (known: {', '.join(ESM_PRESETS)})")
        name = settings.preset if not settings.weights else Path(settings.weights).name
        return ESMDiffusion(body, name, settings.logit_cap, settings.max_seq_len)


def family_of(config: Any) -> tuple[BackboneFamily, Any]:
    """The family of an experiment config and its settings (module docstring)."""
    own = [FAMILIES.get(n) for n in FAMILIES.names() if FAMILIES.get(n).section != "backbone"]
    chosen = [f for f in own if getattr(config, f.section, None) is not None]
    if len(chosen) > 1:
        raise ValueError(f"the config sets {' and '.join(f.section for f in chosen)}: one backbone family per run")
    if chosen:
        return chosen[0](), getattr(config, chosen[0].section)
    settings = config.backbone
    by_class = [FAMILIES.get(n) for n in FAMILIES.names() if FAMILIES.get(n).section == "backbone"]
    family = next((f for f in by_class if type(settings) is f.settings), None)
    if family is None:
        raise ValueError(f"no backbone family reads {type(settings).__name__} settings")
    return family(), settings
