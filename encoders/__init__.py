"""Modality towers and projectors. Importing the package only fills registries; heavy libraries
(timm, open_clip, transformers, torchaudio, esm) are imported inside builders."""

from __future__ import annotations

from encoders import (  # noqa: E402,F401  (register the towers)
    audio,
    audio_adapters,
    diffa,
    imagenet_photos,
    llada_v,
    moonshine,
    protein,
    stacked_adapter,
    vision,
    vision_cnn,
    vision_efficientnet_lite,
    vision_torchvision,
    whisper_llada,
)
from encoders.base import ENCODERS, EncoderSpec, ModalityAdapter, ModalityEncoder, create_encoder, list_encoders
from encoders.projectors import PROJECTORS, create_projector, list_projectors

__all__ = [
    "ENCODERS",
    "PROJECTORS",
    "EncoderSpec",
    "ModalityAdapter",
    "ModalityEncoder",
    "create_encoder",
    "create_projector",
    "list_encoders",
    "list_projectors",
]
