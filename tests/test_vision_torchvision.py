"""Torchvision towers: the pinned ImageNet MobileNetV2 loads strictly, its stages give torchvision's features as
spatial tokens, torchvision's own evaluation transform, stage choice and freezing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from encoders import create_encoder
from encoders.vision_torchvision import mobilenet_v2_weights


def photo() -> Image.Image:
    """A 90 x 60 image with structure (a gradient and a block), the same every call."""
    image = Image.linear_gradient("L").resize((90, 60)).convert("RGB")
    image.paste((200, 40, 40), (20, 10, 50, 40))
    return image


def test_the_imagenet_checkpoint_gives_torchvisions_features():
    import torchvision

    tower = create_encoder("torchvision_mobilenet_v2").eval()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True))
    reference.eval()
    preset = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    pixels = tower.preprocess(photo())
    torch.testing.assert_close(pixels, preset(photo()))  # torchvision's own evaluation transform
    with torch.no_grad():
        tokens = tower(pixels[None])
        grid = reference.features(pixels[None])  # (1, 1280, 7, 7)
    assert tokens.shape == (1, 49, 1280) and tower.num_tokens() == 49
    torch.testing.assert_close(tokens, grid.flatten(2).transpose(1, 2))
    assert sum(p.numel() for p in reference.parameters()) == 3_504_872  # torchvision's MobileNetV2
    # the pinned file is the one torchvision publishes as IMAGENET1K_V1 (whose transform the tower uses)
    v1 = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    assert v1.rsplit("/", 1)[1] == mobilenet_v2_weights().rsplit("/", 1)[1] == "mobilenet_v2-b0353104.pth"


def test_stage_and_size_choose_the_grid_and_lock_keeps_the_last_stages():
    tower = create_encoder("torchvision_mobilenet_v2", stage=14, image_size=64)
    tokens = tower(tower.preprocess(photo())[None])
    assert tokens.shape == (1, 16, 96) and tower.spec.preprocess["resize"] == 73  # 64 x 256 / 224
    tower.lock(2)
    trainable = {n.split(".")[0] for n, p in tower.stages.named_parameters() if p.requires_grad}
    assert trainable == {"12", "13"}
    with pytest.raises(ValueError, match="stage must lie in 1..19"):
        create_encoder("torchvision_mobilenet_v2", weights=None, stage=20)


def test_a_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    state = torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True)
    state.pop("features.0.0.weight")
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(Exception, match="features.0.0.weight"):
        create_encoder("torchvision_mobilenet_v2", weights=str(path))
