"""The modality-encoder interface and the adapter that projects an encoder into the backbone.

A `ModalityEncoder` turns preprocessed inputs of one modality into features (B, N, C); its
`EncoderSpec` says where its weights come from (a local path, never a download) and how raw inputs
are preprocessed, like timm's pretrained config. A projector maps (B, N, C) to (B, N', D) in the
backbone's width. A `ModalityAdapter` is encoder + projector + a freezing policy, and is what the
multimodal model splices at its placeholder tokens.

Layering: `encoders` imports torch, third-party libraries and `multimodal.registry` (a dependency-free
utility; DESIGN.md lists only the first two, but a private copy of the registry would drift).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from multimodal.registry import new_registry

ENCODERS = new_registry("encoder", "encoder")


class TokenCount(NamedTuple):
    """Output positions of one variable-length item (a clip, a protein): real ones and all (padding included)."""

    real: int
    total: int


@dataclass
class SequenceFeatures:
    """What a tower over variable-length items returns (speech, proteins).

    Attributes:
        hidden_states: the input embedding output and every layer's output, each (B, T', C).
        lengths: (B,) real positions in T'.
        extras: auxiliary outputs (``ctc_logits`` (B, T', V) when a speech tower has a CTC head).
    """

    hidden_states: tuple[torch.Tensor, ...]
    lengths: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def last(self) -> torch.Tensor:
        return self.hidden_states[-1]


@dataclass(frozen=True)
class EncoderSpec:
    """Weights source and preprocessing of an encoder.

    Attributes:
        weights: local file or folder with the pretrained weights, or None for random weights.
        preprocess: modality-specific preprocessing settings (image size, mean/std, resize policy;
            sample rate, mel bins; ...), recorded with every run.
    """

    weights: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)


class ModalityEncoder(nn.Module):
    """Base class of every tower.

    Attributes:
        modality: "image", "audio", "protein", ...
        output_dim: feature width C.
        spec: weights and preprocessing.
    """

    modality: str = "none"
    output_dim: int = 0
    spec: EncoderSpec = EncoderSpec()

    def preprocess(self, raw: Any) -> torch.Tensor:
        """Turn one raw input (an image, a waveform, a sequence) into the tensor `forward` takes."""
        raise NotImplementedError

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Features per input before projection (for placeholder expansion)."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, ...) preprocessed inputs -> (B, N, C) features."""
        raise NotImplementedError

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the tower, leaving the last `unlocked_groups` groups of layers trainable (0: all frozen)."""
        for p in self.parameters():
            p.requires_grad_(False)


class ModalityAdapter(nn.Module):
    """Encoder + projector: raw-modality inputs to (B, N', D) embeddings for the backbone."""

    def __init__(self, encoder: ModalityEncoder, projector: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        # (encoder, inputs, mask) -> features, set while training a frozen tower on cached features
        # (multimodal/train/feature_cache.py); None: the encoder runs.
        self.feature_cache: Any = None

    @property
    def modality(self) -> str:
        return self.encoder.modality

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Embeddings one input becomes after projection."""
        n = self.encoder.num_tokens(inputs)
        return getattr(self.projector, "output_tokens", lambda m: m)(n)

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(n, ...) items -> tokens (n, N, D), valid (n, N) bool, and the tower's auxiliary outputs.

        Projectors return tokens, or (tokens, valid) when items give different token counts (speech).
        """
        if self.feature_cache is not None:
            features = self.feature_cache(self.encoder, inputs, mask)
        else:
            features = self.encoder(inputs, mask)
        out = self.projector(features)
        tokens, valid = out if isinstance(out, tuple) else (out, None)
        if valid is None:
            valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        extras = dict(getattr(features, "extras", {}))
        if extras and hasattr(features, "lengths"):
            extras["lengths"] = features.lengths
        return tokens, valid, extras


def create_encoder(name: str, **kwargs: Any) -> ModalityEncoder:
    return ENCODERS.create(name, **kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.names(pattern)
