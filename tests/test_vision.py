"""Vision towers: parity with the libraries' own models on tiny random weights, local weights, preprocessing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from encoders import create_encoder, create_projector
from encoders.vision import image_transform


def hook_output(module):
    seen = {}

    def hook(_m, _i, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out

    return seen, module.register_forward_hook(hook)


def test_timm_features_equal_the_block_output_of_timm_forward():
    torch.manual_seed(0)
    tower = create_encoder("timm_tiny", layer=0).eval()
    x = torch.randn(2, 3, 32, 32)
    seen, handle = hook_output(tower.model.blocks[0])
    tower.model.forward_features(x)
    handle.remove()
    prefix = tower.model.num_prefix_tokens
    torch.testing.assert_close(tower(x), seen["out"][:, prefix:])


def test_open_clip_features_equal_the_block_output_of_open_clip_forward():
    torch.manual_seed(0)
    tower = create_encoder("open_clip_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    seen, handle = hook_output(tower.visual.transformer.resblocks[-1])
    tower.visual(x)
    handle.remove()
    out = seen["out"]
    if out.shape[0] != 2:  # sequence-first layout
        out = out.transpose(0, 1)
    torch.testing.assert_close(tower(x), out[:, 1:])  # drop the class token


def test_siglip_from_a_local_folder_equals_transformers(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    ref = SiglipVisionModel(cfg).eval()
    ref.save_pretrained(str(tmp_path))
    tower = create_encoder("siglip", weights=str(tmp_path)).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = ref(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(tower(x), expected)
    assert tower.num_tokens() == 16 and tower.spec.preprocess["image_size"] == 32


def test_local_weights_round_trip_and_missing_paths(tmp_path):
    torch.manual_seed(0)
    a = create_encoder("timm_tiny").eval()
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    b = create_encoder(
        "timm",
        model_name="vit_tiny_patch16_224",
        weights=str(tmp_path / "vit.safetensors"),
        img_size=32,
        patch_size=8,
        depth=2,
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))

    clip = create_encoder("open_clip_tiny").eval()
    torch.save({"visual." + k: v for k, v in clip.visual.state_dict().items()}, tmp_path / "clip.pt")
    from encoders.vision import OpenClipTower

    fresh = create_encoder("open_clip_tiny").visual
    loaded = OpenClipTower(None, str(tmp_path / "clip.pt"), visual=fresh).eval()
    torch.testing.assert_close(loaded(x), clip(x))

    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.safetensors"):
        create_encoder("timm", model_name="vit_tiny_patch16_224", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="SigLIP folder not found"):
        create_encoder("siglip", weights=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="missing keys"):
        save_file({"cls_token": a.model.cls_token.detach()}, str(tmp_path / "bad.safetensors"))
        create_encoder(
            "timm",
            model_name="vit_tiny_patch16_224",
            weights=str(tmp_path / "bad.safetensors"),
            img_size=32,
            patch_size=8,
            depth=2,
        )


@pytest.mark.parametrize("policy,size", [("squash", (40, 20)), ("shortest", (40, 20)), ("pad", (40, 20))])
def test_preprocessing_policies(policy, size):
    image = Image.new("RGB", size, (255, 0, 0))
    out = image_transform({"image_size": 16, "resize": policy, "mean": [0.5] * 3, "std": [0.5] * 3})(image)
    assert out.shape == (3, 16, 16)
    if policy == "pad":  # the padded band is the mean colour -> 0 after normalisation
        assert out[:, 0, 8].abs().max() < 0.05 and out[0, 8, 8] > 0.9
    else:
        torch.testing.assert_close(out[0], torch.ones(16, 16))
    with pytest.raises(ValueError, match="unknown resize policy"):
        image_transform({"resize": "stretch"})


def _noise_image(w=301, h=187):
    import numpy as np

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("crop_mode,crop_pct", [("center", 0.9), ("center", None), ("squash", 0.95), ("border", 1.0)])
def test_timm_preprocessing_equals_timms_eval_transform(crop_mode, crop_pct):
    import timm

    from encoders.vision import timm_preprocess

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, patch_size=16)
    cfg = {**timm.data.resolve_data_config({}, model=model), "crop_mode": crop_mode, "crop_pct": crop_pct}
    ours = image_transform(timm_preprocess(cfg))
    reference = timm.data.create_transform(**cfg, is_training=False)
    for image in (_noise_image(), _noise_image(90, 140)):
        torch.testing.assert_close(ours(image), reference(image), atol=1e-6, rtol=0)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_open_clip_preprocessing_equals_open_clips_eval_transform(resize_mode):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from encoders.vision import open_clip_preprocess

    cfg = {"size": 64, "resize_mode": resize_mode, "interpolation": "bicubic", "fill_color": 7}
    ours = image_transform(open_clip_preprocess(cfg))
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    for image in (_noise_image(), _noise_image(90, 140)):
        torch.testing.assert_close(ours(image), reference(image), atol=1e-6, rtol=0)


def test_siglip2_naflex_is_refused_naming_the_folder(tmp_path):
    from transformers import Siglip2VisionConfig

    Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path}: SigLIP2 NaFlex"):
        create_encoder("siglip", weights=str(tmp_path))


def test_towers_take_preprocessing_from_their_library_configs():
    tower = create_encoder("timm_tiny")
    assert tower.spec.preprocess["crop_pct"] == 0.9 and tower.spec.preprocess["resize"] == "shortest"
    tower = create_encoder("open_clip_tiny")
    assert tower.spec.preprocess["resize"] == "shortest" and tower.spec.preprocess["interpolation"] == "bicubic"


def test_lock_and_projectors():
    tower = create_encoder("siglip_tiny")
    tower.lock(unlocked_groups=1)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.2." in n for n in trainable)
    for name in ("linear", "mlp2x_gelu"):
        assert create_projector(name, 32, 128)(torch.randn(2, 16, 32)).shape == (2, 16, 128)
