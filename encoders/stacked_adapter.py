"""A light downsampling speech adapter: stack `downsample` consecutive frames, then a two-layer MLP.

The concatenate-and-project downsampler of SLAM-ASR (Ma et al. 2024, "an embarrassingly simple
approach for LLM with strong ASR capacity": every k consecutive encoder frames concatenated, then
Linear -> ReLU -> Linear). It gives the same tokens per second as DIFFA's semantic adapter
(encoders/diffa.py) for a tenth of its work: DIFFA's two convolutions over the full frame rate (C -> C
with kernel 3, then C -> 4C with kernel 3 and stride 4) and its 4C -> C layer are 3.3M weights for a
416-wide encoder, which on a small CPU run costs more than the backbone it feeds (benchmarks/RESULTS.md);
stacking four 416-wide frames into a 192-wide backbone is 0.36M.

``stacked_mlp`` takes `downsample` (frames per token, 4 by default: about 10 tokens per second from
Moonshine's 41.7 frames per second), `hidden` (the MLP's width, the backbone's by default), and the
speech adapters' `prompt_vectors` and `feature_mask` (encoders/audio_adapters.py). Frames beyond a
multiple of `downsample` are dropped, as DIFFA drops them: floor(L / k) tokens for L real frames.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.audio_adapters import SpeechAdapter, _valid
from encoders.base import SequenceFeatures, TokenCount
from encoders.projectors import PROJECTORS


class StackedAdapter(SpeechAdapter):
    """`downsample` frames concatenated per token, then Linear -> ReLU -> Linear (module docstring)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        downsample: int = 4,
        hidden: int | None = None,
        prompt_vectors: int = 0,
        feature_mask: dict | None = None,
    ):
        super().__init__(out_dim, prompt_vectors, feature_mask)
        if downsample < 1:
            raise ValueError(f"stacked_mlp: downsample must be >= 1 frame per token, got {downsample}")
        self.downsample = downsample
        hidden = hidden or out_dim
        self.mlp = nn.Sequential(nn.Linear(downsample * in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def frames_to_tokens(self, frames: TokenCount) -> int:
        return frames.real // self.downsample

    def tokens(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.last  # (B, T, C)
        b, t, c = x.shape
        k = self.downsample
        x = x[:, : t // k * k].reshape(b, t // k, k * c)  # frames (i k ... i k + k - 1) side by side
        lengths = torch.div(features.lengths, k, rounding_mode="floor")
        return self.mlp(x), _valid(lengths, x.shape[1])


PROJECTORS.register("stacked_mlp", StackedAdapter)
