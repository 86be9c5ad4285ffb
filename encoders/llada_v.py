"""LLaDA-V's vision path as released: SigLIP without its last layer, the 2-layer MLP, anyres tiles.

The tower is transformers' SiglipVisionModel with the checkpoint's layers (the release deletes the
last of so400m's 27 at load time and replaces the pooling head by nothing, so 26 remain) and features
= the output of the last remaining layer, before ``post_layernorm``: the 27-layer model's second-to-
last hidden state. Its architecture is read from the tensors (width, patch, positions, layers, MLP
width); the head count is not in them, so it is an argument (16 for so400m, the release's fixed
config). Each image becomes the base view plus its tiles (encoders/anyres.py), each tile 384 px
normalised with mean = std = 0.5, as the release's SigLIP image processor.

``llava_anyres`` is the projector: ``mlp`` = Linear(C, D) -> GELU -> Linear(D, D) (the release's
``mm_projector.0`` / ``.2``), applied to every view, then the views arranged with ``image_newline``
(anyres.arrange). Items with different token counts come back padded, with a validity mask.

Weights: `weights` names a LLaDA-V folder or file (``model.vision_tower.vision_tower.vision_model.*``)
or a SigLIP one (``vision_model.*``, whose last layer is dropped as the release does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders import anyres
from encoders.base import ENCODERS, EncoderSpec, ModalityEncoder
from encoders.projectors import PROJECTORS, mlp2x_gelu
from encoders.vision import open_rgb
from encoders.weights import load_into, load_state_dict

RELEASE_PREFIX = "model.vision_tower.vision_tower.vision_model."
SIGLIP_PREFIX = "vision_model."
ONEVISION_PINPOINTS = "(1x1),...,(6x6)"


@dataclass
class AnyresFeatures:
    """What the tower hands the projector: every view's features and how to put each image back.

    Attributes:
        views: (total views, side^2, C) features of every item's base view and tiles, item by item.
        counts: views per item.
        sizes: (width, height) per item.
        resolutions, crop, max_tiles: the layout the views were cut with (anyres.py).
    """

    views: torch.Tensor
    counts: list[int]
    sizes: list[tuple[int, int]]
    resolutions: list[tuple[int, int]]
    crop: int
    max_tiles: int


def tower_config(state: dict[str, torch.Tensor], heads: int, source: str) -> Any:
    """A SiglipVisionConfig for the `vision_model.*`-relative tensors of `state`."""
    from transformers import SiglipVisionConfig

    try:
        patch = state["embeddings.patch_embedding.weight"]
        positions = state["embeddings.position_embedding.weight"].shape[0]
        fc1 = state["encoder.layers.0.mlp.fc1.weight"]
    except KeyError as err:
        raise ValueError(f"{source}: no SigLIP tower tensor {err.args[0]!r}") from None
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    if math.isqrt(positions) ** 2 != positions:
        raise ValueError(f"{source}: {positions} position embeddings do not form a square grid")
    if patch.shape[0] % heads:
        raise ValueError(f"{source}: tower width {patch.shape[0]} is not divisible by {heads} heads")
    return SiglipVisionConfig(
        hidden_size=patch.shape[0],
        intermediate_size=fc1.shape[0],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        patch_size=patch.shape[-1],
        image_size=math.isqrt(positions) * patch.shape[-1],
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )


def release_tower_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The tower's tensors relative to ``vision_model.``: a LLaDA-V file's as they are, a SigLIP file's
    without its last layer and its pooling head (the release's load-time surgery)."""
    if any(k.startswith(RELEASE_PREFIX) for k in state):
        return {k[len(RELEASE_PREFIX) :]: v for k, v in state.items() if k.startswith(RELEASE_PREFIX)}
    if not any(k.startswith(SIGLIP_PREFIX) for k in state):
        raise ValueError(f"{source}: neither {RELEASE_PREFIX}* (LLaDA-V) nor {SIGLIP_PREFIX}* (SigLIP) keys")
    inner = {k[len(SIGLIP_PREFIX) :]: v for k, v in state.items() if k.startswith(SIGLIP_PREFIX)}
    last = max(int(k.split(".")[2]) for k in inner if k.startswith("encoder.layers."))
    return {k: v for k, v in inner.items() if not k.startswith((f"encoder.layers.{last}.", "head."))}


class LLaDAVTower(ModalityEncoder):
    """SigLIP over anyres views (module docstring); `config` is a SiglipVisionConfig."""

    modality = "image"
    default_projector = "llava_anyres"

    def __init__(
        self,
        config: Any,
        state: dict[str, torch.Tensor] | None = None,
        source: str | None = None,
        pinpoints: str | list = ONEVISION_PINPOINTS,
        max_tiles: int = 4,
    ):
        from transformers import SiglipVisionModel

        super().__init__()
        if max_tiles <= 0:
            raise ValueError(f"max_tiles must be positive, got {max_tiles}")
        self.model = SiglipVisionModel(config)
        if state is not None:
            load_into(self.inner, state, source or "LLaDA-V tower")
        self.crop = int(config.image_size)
        self.side = self.crop // int(config.patch_size)
        self.resolutions = anyres.grid_resolutions(pinpoints, self.crop)
        self.max_tiles = max_tiles
        self.output_dim = int(config.hidden_size)
        preprocess = {"image_size": self.crop, "mean": [0.5] * 3, "std": [0.5] * 3, "anyres": pinpoints}
        self.spec = EncoderSpec(source, {**preprocess, "max_tiles": max_tiles})

    @property
    def inner(self) -> nn.Module:
        """The vision transformer (transformers 5 drops 4.x's ``vision_model`` wrapper; the tensors are the same)."""
        return getattr(self.model, "vision_model", self.model)

    def preprocess(self, raw: Any) -> torch.Tensor:
        image = open_rgb(raw)
        views = [self._pixels(v) for v in anyres.crops(image, self.resolutions, self.crop)]
        return anyres.pack_crops(torch.stack(views), image.size)

    @staticmethod
    def _pixels(view: Any) -> torch.Tensor:
        """(3, S, S): rescaled by 1/255 in float64 then normalised in float32, as transformers' processor."""
        x = (np.asarray(view, dtype=np.float64) * (1 / 255)).astype(np.float32)
        return torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1).contiguous()

    def num_tokens(self, inputs: torch.Tensor) -> int:
        _, size = anyres.unpack_crops(inputs)
        return anyres.token_count(size, self.resolutions, self.crop, self.side, self.max_tiles)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> AnyresFeatures:
        items = [anyres.unpack_crops(item) for item in inputs]
        views = torch.cat([v for v, _ in items])
        dtype = self.inner.embeddings.patch_embedding.weight.dtype
        out = self.model(pixel_values=views.to(dtype), output_hidden_states=True)
        return AnyresFeatures(
            out.hidden_states[-1],
            [v.shape[0] for v, _ in items],
            [s for _, s in items],
            self.resolutions,
            self.crop,
            self.max_tiles,
        )


class AnyresProjector(nn.Module):
    """``mlp`` on every view, then each image's views arranged with ``image_newline`` (module docstring)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = mlp2x_gelu(in_dim, out_dim)
        # LLaVA's initialisation for a fresh model; a release overwrites it
        self.image_newline = nn.Parameter(torch.randn(out_dim) / math.sqrt(out_dim))

    def forward(self, features: AnyresFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.mlp(features.views).split(features.counts)
        images = [
            anyres.arrange(v, self.image_newline, size, features.resolutions, features.crop, features.max_tiles)
            for v, size in zip(projected, features.sizes, strict=True)
        ]
        longest = max(x.shape[0] for x in images)
        tokens = images[0].new_zeros(len(images), longest, images[0].shape[-1])
        valid = torch.zeros(len(images), longest, dtype=torch.bool, device=tokens.device)
        for i, x in enumerate(images):
            tokens[i, : x.shape[0]], valid[i, : x.shape[0]] = x, True
        return tokens, valid


@PROJECTORS.register("llava_anyres")
def llava_anyres(in_dim: int, out_dim: int) -> AnyresProjector:
    return AnyresProjector(in_dim, out_dim)


@ENCODERS.register("llada_v_siglip")
def llada_v_siglip(
    weights: str | None = None, heads: int = 16, pinpoints: str | list = ONEVISION_PINPOINTS, max_tiles: int = 4
) -> LLaDAVTower:
    """LLaDA-V's tower from a local LLaDA-V or SigLIP checkpoint (a folder or one weights file)."""
    if weights is None:
        raise ValueError("the 'llada_v_siglip' encoder needs weights: a local LLaDA-V or SigLIP checkpoint")
    state = release_tower_state(load_state_dict(weights), weights)
    return LLaDAVTower(tower_config(state, heads, weights), state, weights, pinpoints, max_tiles)


@ENCODERS.register("llada_v_siglip_tiny")
def llada_v_siglip_tiny(pinpoints: str | list = "(1x1),...,(3x3)", max_tiles: int = 2) -> LLaDAVTower:
    """2-layer, 32-wide SigLIP on 32 px tiles of patch 8 (16 features per view): tests."""
    from transformers import SiglipVisionConfig

    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        vision_use_head=False,
    )
    return LLaDAVTower(config, pinpoints=pinpoints, max_tiles=max_tiles)
