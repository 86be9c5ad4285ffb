"""SpecAugment (Park et al., 2019): frequency and time masking of log-mel features during training.

A speech encoder trained from scratch on a few voices learns those voices; masking random mel bands
and random stretches of time makes it lean on the whole spectrogram instead, which is what carries it
to unseen speakers. Only masking is done (no time warping), as in most later recipes. The masks stay
inside each clip's real frames, so padding never changes, and the masked value is 0, the middle of
the Whisper-normalised log-mel range.

Measured on the embedded spoken corpus (benchmarks/RESULTS.md): with the defaults below and the
`spoken_asr` budget of 4,000 steps, test WER rose from 26.3 % to 62.6 % (held-out voices 44.4 % ->
68.0 %): masking regularises a model that is still underfitting. It is off unless configured
(`encoder_args.spec_augment`), for longer runs and real corpora.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpecAugment:
    """`freq_masks` bands of at most `freq_width` mel bins and `time_masks` stretches of at most
    `time_width` frames (never more than `max_time_fraction` of the clip each), per clip."""

    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: int = 20
    max_time_fraction: float = 0.2

    def __call__(self, features: torch.Tensor, frames: torch.Tensor, generator=None) -> torch.Tensor:
        """features (B, n_mels, T), real frame counts (B,) -> masked copy."""
        b, n_mels, _ = features.shape
        keep = torch.ones_like(features, dtype=torch.bool)
        bins = torch.arange(n_mels, device=features.device)
        steps = torch.arange(features.shape[-1], device=features.device)
        for i in range(b):
            real = int(frames[i])
            for _ in range(self.freq_masks):
                width = int(torch.randint(0, self.freq_width + 1, (1,), generator=generator))
                start = int(torch.randint(0, max(n_mels - width, 0) + 1, (1,), generator=generator))
                keep[i] &= ~(((bins >= start) & (bins < start + width))[:, None] & (steps < real)[None, :])
            limit = min(self.time_width, int(self.max_time_fraction * real))
            for _ in range(self.time_masks):
                width = int(torch.randint(0, limit + 1, (1,), generator=generator))
                start = int(torch.randint(0, max(real - width, 0) + 1, (1,), generator=generator))
                keep[i] &= ~((steps >= start) & (steps < start + width))[None, :]
        return features.masked_fill(~keep, 0.0)
