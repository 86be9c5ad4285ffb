"""train.cache_features: a frozen tower runs once per distinct item and training is unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from encoders import ModalityAdapter, create_encoder, create_projector
from multimodal.config import ConfigError
from multimodal.train.feature_cache import FeatureCache, install_feature_caches


class CountingTower(torch.nn.Module):
    """A frozen conv_tiny that counts the items it encodes."""

    def __init__(self):
        super().__init__()
        self.tower = create_encoder("conv_tiny")
        self.tower.lock()
        self.items = 0

    def forward(self, inputs, mask=None):
        self.items += inputs.shape[0]
        return self.tower(inputs, mask)


def test_each_distinct_item_is_encoded_once_and_features_equal_the_tower():
    tower = CountingTower()
    adapter = ModalityAdapter(tower, create_projector("linear", in_dim=16, out_dim=8))
    images = torch.randn(3, 3, 32, 32)
    expected = tower.tower(images)
    adapter.feature_cache = cache = FeatureCache("image")
    first, _, _ = adapter(images)
    batch = torch.stack([images[2], images[0], images[2], images[1]])  # repeats, another order
    again, _, _ = adapter(batch)
    assert tower.items == 3 and len(cache) == 3 and (cache.hits, cache.misses) == (4, 3)
    torch.testing.assert_close(again, adapter.projector(expected[[2, 0, 2, 1]]))
    torch.testing.assert_close(first, adapter.projector(expected))
    first.sum().backward()  # gradients still reach the projector
    assert adapter.projector.weight.grad is not None


def test_a_trainable_tower_is_refused():
    adapter = ModalityAdapter(create_encoder("conv_tiny"), create_projector("linear", in_dim=16, out_dim=8))
    model = torch.nn.Module()
    model.adapters = torch.nn.ModuleDict({"image": adapter})
    with pytest.raises(ValueError, match="the image tower trains"):
        install_feature_caches(model)


def test_config_refuses_caching_a_tower_that_trains():
    from multimodal.train.config import load_experiment

    with pytest.raises(ConfigError, match="'encoder' is in train.trainable"):
        load_experiment("shapes_vqa", ["train.cache_features=true"])
    with pytest.raises(ConfigError, match="needs a modality tower"):
        load_experiment("digits_reverse", ["train.cache_features=true"])


def test_a_frozen_tower_trains_the_same_with_cached_features(tmp_path):
    from multimodal.train.config import load_experiment
    from multimodal.train.run import train

    curves = []
    for cache in ("false", "true"):
        sets = [
            f"train.output_dir={tmp_path / cache}",
            f"task.data_dir={tmp_path / 'data'}",
            "task.shapes={train_scenes: 12, validation_scenes: 4, test_scenes: 4, shard_size: 10}",
            "modalities.image.encoder_args={image_size: 32, widths: [16, 16]}",
            "train.trainable=[projector, backbone]",
            f"train.cache_features={cache}",
            "train.max_steps=4",
            "train.batch_size=8",
            "train.threads=1",
            "train.log_every=1",
            "train.eval_at_end=false",
        ]
        run = train(load_experiment("shapes_vqa", sets))
        assert all(a.feature_cache is None for a in run.model.adapters.values())  # taken off after training
        lines = [json.loads(x) for x in (run.folder / "metrics.jsonl").read_text().splitlines()]
        curves.append([x["loss"] for x in lines if "loss" in x])
    assert len(curves[0]) == 4
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]))
