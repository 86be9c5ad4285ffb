"""The LLaDA-architecture masked-diffusion backbones (dense, MoE, Dream, LLaDA2): presets, layers, transformer,
checkpoint import."""

from __future__ import annotations

from multimodal.backbone.cache import KVCache
from multimodal.backbone.config import BACKBONE_PRESETS, BackboneConfig, backbone_preset, list_backbones
from multimodal.backbone.dream import DreamBackbone, DreamConfig
from multimodal.backbone.llada2 import LLaDA2Backbone, LLaDA2Config
from multimodal.backbone.moe import LLaDAMoEBackbone, MoEBackboneConfig
from multimodal.backbone.transformer import LLaDABackbone, create_backbone

__all__ = [
    "BACKBONE_PRESETS",
    "BackboneConfig",
    "DreamBackbone",
    "DreamConfig",
    "KVCache",
    "LLaDA2Backbone",
    "LLaDA2Config",
    "LLaDABackbone",
    "LLaDAMoEBackbone",
    "MoEBackboneConfig",
    "backbone_preset",
    "create_backbone",
    "list_backbones",
]
