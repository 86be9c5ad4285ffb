"""Vocal tract length perturbation (VTLP; Jaitly & Hinton, 2013) of log-mel features during training.

A speaker's vocal tract length scales the formant frequencies by a roughly constant factor, so a
recogniser trained on a few voices meets new ones as spectra stretched or squeezed along frequency.
VTLP draws a warp factor alpha per utterance (uniform in [1 - max_warp, 1 + max_warp]) and warps the
frequency axis with the paper's piecewise-linear map, which scales frequencies by alpha up to a
boundary and then runs straight to the Nyquist frequency so the band edge stays put:

    f' = alpha f                                       for f <= f_hi min(alpha, 1) / alpha
    f' = nyq - (nyq - f_hi min(alpha, 1)) / (nyq - f_hi min(alpha, 1) / alpha) (nyq - f)   above

The paper warps the linear spectrum before the mel filterbank; here the warp is applied to the
log-mel features themselves (they are what the encoder receives): output bin m takes the value of
the input at the frequency that maps onto bin m's centre frequency, read by linear interpolation
between the neighbouring input bins on the mel scale. Bin centres follow the Slaney mel scale of
Whisper's filterbank (0 Hz to sample_rate / 2). Padding frames are left as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale (librosa's default, Whisper's filterbank): linear below 1 kHz, logarithmic above."""
    linear = hz / (200.0 / 3)
    log = 15.0 + torch.log(hz.clamp_min(1e-6) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(hz < 1000.0, linear, log)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = mel * (200.0 / 3)
    log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (mel - 15.0))
    return torch.where(mel < 15.0, linear, log)


def mel_centres(n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_mels,) centre frequencies in Hz of a Slaney mel filterbank from 0 Hz to the Nyquist frequency."""
    top = hz_to_mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))
    return mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))[1:-1]


def inverse_warp(hz: torch.Tensor, alpha: torch.Tensor, nyquist: float, f_hi: float) -> torch.Tensor:
    """The source frequency f that the piecewise-linear VTLP map sends to `hz`, per row's alpha.

    hz (F,), alpha (B,) -> (B, F).
    """
    alpha = alpha[:, None].to(hz.dtype)
    knee_out = f_hi * alpha.clamp(max=1.0)  # f' at the knee
    knee_in = knee_out / alpha  # f at the knee
    below = hz / alpha
    above = nyquist - (nyquist - hz) * (nyquist - knee_in) / (nyquist - knee_out)
    return torch.where(hz <= knee_out, below, above)


@dataclass(frozen=True)
class VTLP:
    """Per-utterance frequency warping of (B, n_mels, T) log-mel features by alpha ~ U(1 -/+ max_warp)."""

    max_warp: float = 0.1
    sample_rate: int = 16000
    f_hi: float = 4800.0  # the paper's boundary frequency for 16 kHz audio

    def __post_init__(self) -> None:
        if not 0.0 < self.max_warp < 0.5:
            raise ValueError(f"VTLP max_warp must be in (0, 0.5), got {self.max_warp}")

    def warp(self, features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """features (B, n_mels, T) warped by alpha (B,) (1.0 leaves a row unchanged)."""
        b, n_mels, _ = features.shape
        centres = mel_centres(n_mels, self.sample_rate)  # (F,) Hz
        source = inverse_warp(centres, alpha.double().cpu(), self.sample_rate / 2.0, self.f_hi)  # (B, F) Hz
        # fractional index of each source frequency among the input bins, on the mel scale
        mel_step = (hz_to_mel(centres[-1:]) - hz_to_mel(centres[:1])) / (n_mels - 1)
        position = ((hz_to_mel(source) - hz_to_mel(centres[:1])) / mel_step).clamp(0, n_mels - 1)  # (B, F)
        low = position.floor().long().clamp(max=n_mels - 2)
        frac = (position - low).to(features.dtype).to(features.device)[..., None]  # (B, F, 1)
        low = low.to(features.device)[..., None].expand(b, n_mels, features.shape[-1])  # (B, F, T)
        lower = features.gather(1, low)
        upper = features.gather(1, low + 1)
        return lower + frac * (upper - lower)

    def __call__(self, features: torch.Tensor, frames: torch.Tensor, generator=None) -> torch.Tensor:
        """features (B, n_mels, T), real frame counts (B,) -> warped copy (padding frames unchanged)."""
        u = torch.rand(features.shape[0], generator=generator)
        alpha = 1.0 + self.max_warp * (2.0 * u - 1.0)
        warped = self.warp(features, alpha)
        real = torch.arange(features.shape[-1], device=features.device)[None, :] < frames.to(features.device)[:, None]
        return torch.where(real[:, None, :], warped, features)
