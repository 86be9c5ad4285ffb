"""A small convolutional image tower trained from scratch, for the embedded shapes data on a CPU.

Pretrained ViTs are the real-data choice (vision.py); a from-scratch tower on a laptop needs a
stronger inductive bias to learn in minutes. This one: two coordinate channels (x, y in [-1, 1])
appended to the RGB input, so every feature knows where it is (CoordConv), then strided 3x3
convolutions with GroupNorm and GELU down to a grid of `grid` x `grid` tokens, plus a learned
position embedding per grid cell. Output: (B, grid^2, width) tokens for the projector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from encoders.base import ENCODERS, EncoderSpec
from encoders.vision import VisionTower


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU())


class ConvTower(VisionTower):
    """CoordConv stem + strided conv stages -> grid tokens."""

    def __init__(
        self,
        image_size: int = 64,
        widths: tuple[int, ...] = (32, 64, 96, 128),
        stem_width: int = 32,
        preprocess: dict[str, Any] | None = None,
    ):
        stages = len(widths)
        if image_size % (2**stages):
            raise ValueError(f"image_size {image_size} must be divisible by 2^{stages}")
        settings = {
            "image_size": image_size,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "resize": "squash",
            "interpolation": "bilinear",
            **(preprocess or {}),
        }
        super().__init__(EncoderSpec(None, settings), widths[-1], 2**stages)
        self.grid = image_size // 2**stages
        layers = [_block(5, stem_width, 1)]
        c = stem_width
        for w in widths:
            layers.append(_block(c, w, 2))
            c = w
        self.body = nn.Sequential(*layers)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, widths[-1]))
        nn.init.normal_(self.pos, std=0.02)

    def blocks(self) -> list[nn.Module]:
        return list(self.body)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = inputs.shape
        ys = torch.linspace(-1, 1, h, device=inputs.device, dtype=inputs.dtype)
        xs = torch.linspace(-1, 1, w, device=inputs.device, dtype=inputs.dtype)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None].expand(b, 2, h, w)  # (B, 2, H, W)
        feats = self.body(torch.cat([inputs, coords], dim=1))  # (B, C, g, g)
        return feats.flatten(2).transpose(1, 2) + self.pos  # (B, g*g, C)


@ENCODERS.register("conv_small")
def conv_small(
    image_size: int = 64,
    widths: tuple[int, ...] | list[int] = (32, 64, 96, 128),
    stem_width: int = 32,
    preprocess: dict[str, Any] | None = None,
) -> ConvTower:
    """About 0.2M parameters; 64 px -> 4x4x... stages -> an 8 x 8 grid of 128-wide tokens by default."""
    return ConvTower(image_size, tuple(widths), stem_width, preprocess)


@ENCODERS.register("conv_tiny")
def conv_tiny(preprocess: dict[str, Any] | None = None) -> ConvTower:
    """32 px, 2 stages, 16-wide: tests."""
    return ConvTower(32, (16, 16), 16, preprocess)
