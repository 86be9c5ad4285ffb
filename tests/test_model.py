"""The multimodal model: features land exactly at placeholder positions, never masked, and decode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
from multimodal.model import MultimodalDiffusionModel
from multimodal.sampling import SamplerConfig, SpecialIds, create_sampler, generate
from multimodal.types import MediaFeatures, MultimodalBatch

IMG = 7  # placeholder token id


class Fake(nn.Module):
    """Adapter stand-in: (B, N, 3) inputs -> (B, N, 128) features, all valid, no extras."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 128)

    def forward(self, inputs, mask=None):
        out = self.proj(inputs)
        return out, torch.ones(out.shape[:2], dtype=torch.bool), {}


@pytest.fixture(params=["llada_tiny", "llada_tiny_moe", "dream_tiny", "llada2_tiny"])
def model(request):
    """The multimodal model on each 128-wide family preset: adapters take every family unchanged."""
    torch.manual_seed(0)
    backbone = create_backbone(backbone_preset(request.param, max_seq_len=64, init_std=0.2)).eval()
    return MultimodalDiffusionModel(backbone, {"image": Fake()}, {"image": IMG})


def test_features_land_exactly_at_placeholders(model):
    ids = torch.tensor([[5, IMG, IMG, 9, 10, IMG, IMG, 11], [5, 6, IMG, IMG, 9, 10, 11, 12]])
    feats = torch.randn(2, 4, 128)
    valid = torch.tensor([[True] * 4, [True, True, False, False]])  # row 0: two images, row 1: one
    embeds = model.splice(ids, {"image": feats}, {"image": valid})
    torch.testing.assert_close(embeds[0, [1, 2, 5, 6]], feats[0])
    torch.testing.assert_close(embeds[1, [2, 3]], feats[1, :2])
    text = ids != IMG
    torch.testing.assert_close(embeds[text], model.backbone.embed(ids)[text])
    with pytest.raises(ValueError, match="placeholder tokens but"):
        model.splice(ids, {"image": feats})  # row 1 has 2 placeholders but 4 features


def test_encode_groups_items_per_row(model):
    inputs = torch.randn(2, 3, 2, 3)  # 2 rows, up to 3 items of 2 feature vectors
    present = torch.tensor([[True, True, False], [True, False, False]])
    feats, valid, _ = model.encode({"image": inputs}, {"image": present})
    assert feats["image"].shape == (2, 6, 128)
    assert valid["image"].tolist() == [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]
    torch.testing.assert_close(feats["image"][0, 2:4], model.adapters["image"](inputs[0, 1:2])[0][0])


def test_guidance_rows_take_no_features(model):
    ids = torch.tensor([[5, IMG, 9]])
    both = torch.cat([ids, torch.tensor([[1, 1, 9]])])  # unconditional row: prompt masked
    embeds = model.splice(both, {"image": torch.randn(1, 1, 128)})
    torch.testing.assert_close(embeds[1], model.backbone.embed(both[1:])[0])


def test_loss_never_masks_prompt_or_image_positions(model):
    ids = torch.tensor([[5, IMG, IMG, 9, 20, 21, 22, 2]])
    maskable = torch.tensor([[False] * 4 + [True] * 4])
    batch = MultimodalBatch(input_ids=ids, maskable=maskable, modality_inputs={"image": torch.randn(1, 1, 2, 3)})
    seen = []
    orig = model.backbone.forward

    def spy(*args, **kw):
        seen.append(kw.get("inputs_embeds"))
        return orig(*args, **kw)

    model.backbone.forward = spy
    cfg = DiffusionConfig()
    out = diffusion_loss(model, batch, cfg, cfg.build_schedule(), 1, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert seen[0] is not None  # features were spliced
    assert model.adapters["image"].proj.weight.grad is not None  # and receive gradients


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_generation_with_precomputed_features(model, cache):
    feats, valid, _ = model.encode({"image": torch.randn(2, 1, 2, 3)})
    assert feats["image"].shape == (2, 2, 128) and valid["image"].all()
    prompts = [[5, IMG, IMG, 9], [IMG, IMG, 6]]
    cfg = SamplerConfig(steps=8, gen_length=8, block_length=4, cache=cache, cfg_scale=0.5)
    out = generate(model, prompts, create_sampler(cfg), SpecialIds(1, 2), media=MediaFeatures(feats))
    assert (out.commit_step >= 0).all()  # every position committed (random weights may propose the mask id)
    assert not (out.generated == IMG).any()  # a placeholder is never proposed (it would be read as an image slot)
    alone = generate(
        model, [prompts[1]], create_sampler(cfg), SpecialIds(1, 2), media=MediaFeatures({"image": feats["image"][1:]})
    )
    assert out.generated[1].tolist() == alone.generated[0].tolist()
