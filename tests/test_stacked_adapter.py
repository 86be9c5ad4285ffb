"""The stacked-frame speech adapter (encoders/stacked_adapter.py) and training-time feature masking of
a speech adapter's input (encoders/audio_adapters.py)."""

from __future__ import annotations

import pytest
import torch

from encoders import create_projector
from encoders.base import SequenceFeatures, TokenCount


def features(lengths, width=6, total=11):
    x = torch.randn(len(lengths), total, width)
    return SequenceFeatures(hidden_states=(x,), lengths=torch.tensor(lengths))


def test_stacking_concatenates_consecutive_frames_and_counts_real_tokens():
    torch.manual_seed(0)
    adapter = create_projector("stacked_mlp", 6, 8, downsample=4, hidden=5).eval()
    feats = features([11, 7])
    tokens, valid = adapter(feats)
    assert tokens.shape == (2, 2, 8)  # 11 frames: the 3 beyond a multiple of 4 dropped
    assert valid.tolist() == [[True, True], [True, False]]  # floor(7 / 4) = 1 real token
    second = torch.cat([feats.last[0, 4 + i] for i in range(4)])  # frames 4..7 side by side
    assert torch.allclose(tokens[0, 1], adapter.mlp(second), atol=1e-6)
    assert adapter.output_tokens(TokenCount(real=7, total=11)) == 1
    assert sum(p.numel() for p in create_projector("stacked_mlp", 416, 192).parameters()) < 400_000
    with pytest.raises(ValueError, match="stacked_mlp: downsample must be >= 1"):
        create_projector("stacked_mlp", 6, 8, downsample=0)


@pytest.mark.parametrize("name", ["stacked_mlp", "diffa_semantic", "sequence_linear"])
def test_feature_masking_zeroes_real_frames_in_training_only(name):
    torch.manual_seed(0)
    mask = {"freq_masks": 1, "freq_width": 3, "time_masks": 2, "time_width": 4, "max_time_fraction": 0.5}
    adapter = create_projector(name, 6, 8, feature_mask=mask)
    seen = []
    read = adapter.tokens
    adapter.tokens = lambda f: (seen.append(f.last), read(f))[1]
    feats = features([11, 7])
    adapter.eval()
    adapter(feats)
    assert torch.equal(seen[-1], feats.last)  # evaluation reads the features as they are
    adapter.train()
    for _ in range(5):
        adapter(feats)
        zeroed = (seen[-1] == 0) & (feats.last != 0)
        assert zeroed.any() and torch.equal(seen[-1][1, 7:], feats.last[1, 7:])  # the padding never masked
        assert torch.equal(seen[-1][~zeroed], feats.last[~zeroed])  # masking only zeroes
    assert not torch.equal(seen[-1], seen[-2])  # a new mask every step


def test_an_unknown_adapter_argument_names_the_config_key():
    from multimodal.config import ConfigError
    from multimodal.train.build import _named_args

    with pytest.raises(ConfigError, match="modalities.audio.projector_args: .*unexpected keyword argument 'freq_mask'"):
        with _named_args("modalities.audio.projector_args"):
            create_projector("stacked_mlp", 6, 8, feature_mask={"freq_mask": 2})
    with pytest.raises(TypeError, match="missing 1 required positional argument"):  # other errors left as they are
        with _named_args("modalities.audio.projector_args"):
            create_projector("stacked_mlp", 6)
