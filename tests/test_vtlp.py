"""VTLP frequency warping of log-mel features: identity at alpha 1, formants move the right way, padding kept."""

from __future__ import annotations

import pytest
import torch

from encoders.audio import conv_speech
from encoders.vtlp import VTLP, hz_to_mel, inverse_warp, mel_centres, mel_to_hz


def test_mel_scale_round_trip_and_centres():
    hz = torch.tensor([0.0, 500.0, 1000.0, 3000.0, 8000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz)
    centres = mel_centres(80, 16000)
    assert centres.shape == (80,) and bool((centres.diff() > 0).all()) and 0 < centres[0] < centres[-1] < 8000


def test_warp_map_scales_below_the_knee_and_keeps_the_band_edge():
    hz = torch.tensor([100.0, 1000.0, 8000.0], dtype=torch.float64)
    source = inverse_warp(hz, torch.tensor([0.9, 1.1]), 8000.0, 4800.0)
    torch.testing.assert_close(source[:, :2], hz[:2] / torch.tensor([[0.9], [1.1]], dtype=torch.float64))
    torch.testing.assert_close(source[:, 2], torch.tensor([8000.0, 8000.0], dtype=torch.float64))


def test_alpha_one_is_the_identity_and_a_peak_moves_with_alpha():
    vtlp = VTLP()
    n_mels, frames = 80, 10
    centres = mel_centres(n_mels, 16000)
    peak = int(torch.argmin((centres - 2000.0).abs()))  # a "formant" at 2 kHz
    features = torch.zeros(3, n_mels, frames)
    features[:, peak] = 1.0
    out = vtlp.warp(features, torch.tensor([1.0, 1.1, 0.9]))
    torch.testing.assert_close(out[0], features[0])
    moved = out[:, :, 0].argmax(dim=1)
    assert moved[1] > peak > moved[2]  # alpha > 1 stretches the spectrum upwards, alpha < 1 squeezes it
    target = int(torch.argmin((centres - 2200.0).abs()))
    assert abs(int(moved[1]) - target) <= 1


def test_padding_frames_are_untouched_and_settings_are_checked():
    features = torch.randn(2, 80, 12)
    frames = torch.tensor([12, 5])
    out = VTLP(max_warp=0.2)(features, frames, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[1, :, 5:], features[1, :, 5:])
    assert not torch.allclose(out[1, :, :5], features[1, :, :5])
    with pytest.raises(ValueError, match="max_warp"):
        VTLP(max_warp=0.0)
    encoder = conv_speech(width=32, layers=1, heads=2, vtlp={}).eval()
    assert encoder.vtlp is not None and encoder.vtlp.max_warp == 0.1
