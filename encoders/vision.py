"""Vision towers: timm ViTs, open_clip image towers, SigLIP / SigLIP2 through transformers.

Every tower returns patch features (B, N, C) of a selectable layer (the LLaDA-V default is SigLIP2
so400m patch14 at 384 px, second-to-last layer, 729 tokens), without class / register tokens, and
carries its preprocessing (image size, mean / std, resize policy, interpolation) in its spec, as
timm's pretrained configs do. Real weights come only from local paths; a missing one is an error
naming it. Each family has a tiny random preset for tests, checked for parity against the library's
own model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoders.base import ENCODERS, EncoderSpec, ModalityEncoder
from encoders.weights import load_into, load_state_dict, strip_prefix

RESIZE_POLICIES = ("squash", "shortest", "pad")


def image_transform(preprocess: dict[str, Any]):
    """A callable image (PIL, path or encoded bytes) -> (3, H, W) float tensor for the given settings.

    Keys: image_size (int), mean, std (3 floats), resize (``squash``: resize to a square ignoring
    aspect ratio; ``shortest``: shortest side to image_size then centre crop; ``pad``: pad to a square
    with the mean colour, then resize, as LLaVA's "pad" aspect mode), interpolation (bilinear / bicubic).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    size = int(preprocess.get("image_size", 224))
    policy = preprocess.get("resize", "squash")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy '{policy}' (choose from {', '.join(RESIZE_POLICIES)})")
    mean = list(preprocess.get("mean", (0.5, 0.5, 0.5)))
    std = list(preprocess.get("std", (0.5, 0.5, 0.5)))
    interp = InterpolationMode(preprocess.get("interpolation", "bicubic"))
    steps: list[Any] = [T.ToImage()]
    if policy == "pad":
        steps.append(_PadToSquare(mean))
    if policy == "shortest":
        steps += [T.Resize(size, interpolation=interp, antialias=True), T.CenterCrop(size)]
    else:
        steps.append(T.Resize((size, size), interpolation=interp, antialias=True))
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    transform = T.Compose(steps)

    def apply(image: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(image, (bytes, bytearray)):
            import io

            with Image.open(io.BytesIO(image)) as im:
                image = im.convert("RGB")
        elif isinstance(image, (str, Path)):
            with Image.open(image) as im:
                image = im.convert("RGB")
        elif isinstance(image, Image.Image) and image.mode != "RGB":
            image = image.convert("RGB")
        return transform(image)

    return apply


class _PadToSquare(nn.Module):
    def __init__(self, mean: list[float]):
        super().__init__()
        self.fill = [round(255 * m) for m in mean]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        h, w = image.shape[-2:]
        side = max(h, w)
        left, top = (side - w) // 2, (side - h) // 2
        return F.pad(image, [left, top, side - w - left, side - h - top], fill=self.fill)


class VisionTower(ModalityEncoder):
    """Shared behaviour: preprocessing from the spec, token count from the patch grid, freezing."""

    modality = "image"

    def __init__(self, spec: EncoderSpec, output_dim: int, patch_size: int):
        super().__init__()
        self.spec, self.output_dim, self.patch_size = spec, output_dim, patch_size
        self._transform = image_transform(spec.preprocess)

    def preprocess(self, raw: Any) -> torch.Tensor:
        return self._transform(raw)

    def num_tokens(self, inputs: torch.Tensor | None = None) -> int:
        size = int(self.spec.preprocess.get("image_size", 224))
        return (size // self.patch_size) ** 2

    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze everything but the last `unlocked_groups` transformer blocks."""
        for p in self.parameters():
            p.requires_grad_(False)
        if unlocked_groups > 0:
            for block in self.blocks()[-unlocked_groups:]:
                for p in block.parameters():
                    p.requires_grad_(True)


class TimmTower(VisionTower):
    """Any timm ViT (``timm.create_model(name, pretrained=False)``); features of layer `layer`, no prefix tokens."""

    def __init__(
        self,
        model_name: str,
        weights: str | None = None,
        layer: int = -1,
        preprocess: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ):
        import timm

        model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model '{model_name}' has no forward_intermediates; use a ViT-style model")
        if weights:
            state = load_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            load_into(model, state, weights)
        cfg = timm.data.resolve_data_config({}, model=model)
        settings = {
            "image_size": cfg["input_size"][-1],
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "resize": "shortest",
            **(preprocess or {}),
        }
        patch = model.patch_embed.patch_size[0]
        super().__init__(EncoderSpec(weights, settings), model.embed_dim, patch)
        self.model, self.layer = model, layer

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        index = self.layer % len(self.model.blocks)
        (features,) = self.model.forward_intermediates(
            inputs, indices=[index], intermediates_only=True, output_fmt="NLC", norm=False
        )
        return features


class OpenClipTower(VisionTower):
    """The image tower of an open_clip model; weights from a local CLIP checkpoint (its ``visual.*`` keys)."""

    def __init__(
        self,
        model_name: str | None = None,
        weights: str | None = None,
        layer: int = -1,
        preprocess: dict[str, Any] | None = None,
        visual: nn.Module | None = None,
    ):
        import open_clip

        if visual is None:
            if model_name is None:
                raise ValueError("OpenClipTower needs a model_name or a visual module")
            visual = open_clip.create_model(model_name, pretrained=None).visual
        if weights:
            state = load_state_dict(weights)
            state = strip_prefix(state, "visual.") if any(k.startswith("visual.") for k in state) else state
            load_into(visual, state, weights)
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        settings = {
            "image_size": size,
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize": "shortest",
            **(preprocess or {}),
        }
        patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
        super().__init__(EncoderSpec(weights, settings), visual.transformer.width, patch)
        self.visual, self.layer = visual, layer

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        index = self.layer % len(self.visual.transformer.resblocks)
        out = self.visual.forward_intermediates(inputs, indices=[index], intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][0]


class SiglipTower(VisionTower):
    """SigLIP / SigLIP2 vision model (transformers) from a local folder; features = hidden_states[layer]."""

    def __init__(
        self, folder: str | None = None, layer: int = -2, preprocess: dict[str, Any] | None = None, config: Any = None
    ):
        import json

        from transformers import AutoConfig, SiglipVisionConfig, SiglipVisionModel

        settings: dict[str, Any] = {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic",
            "resize": "squash",
        }
        if folder is not None:
            path = Path(folder)
            if not path.is_dir():
                raise FileNotFoundError(f"SigLIP folder not found: {path} (weights load from local paths only)")
            config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
            config = getattr(config, "vision_config", config)
            proc = path / "preprocessor_config.json"
            if proc.is_file():
                p = json.loads(proc.read_text())
                settings.update(mean=p.get("image_mean", settings["mean"]), std=p.get("image_std", settings["std"]))
        elif config is None:
            raise ValueError("SiglipTower needs a local folder or a config")
        if getattr(config, "model_type", "") == "siglip2_vision_model":
            from transformers import Siglip2VisionModel as Model
        else:
            Model = SiglipVisionModel  # noqa: N806
            config = config if isinstance(config, SiglipVisionConfig) else SiglipVisionConfig(**config.to_dict())
        model = Model(config)
        if folder is not None:
            state = load_state_dict(folder)
            if any(k.startswith("vision_model.") for k in state):  # a vision or full SigLIP checkpoint
                state = {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}
            if any(k.startswith("vision_model.") for k in model.state_dict()):  # module layout of the version
                state = {"vision_model." + k: v for k, v in state.items()}
            load_into(model, state, str(folder))
        settings.update(image_size=config.image_size, **(preprocess or {}))
        super().__init__(EncoderSpec(folder, settings), config.hidden_size, config.patch_size)
        self.model, self.layer = model, layer

    def blocks(self) -> list[nn.Module]:
        inner = getattr(self.model, "vision_model", self.model)
        return list(inner.encoder.layers)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(pixel_values=inputs, output_hidden_states=True)
        return out.hidden_states[self.layer]


@ENCODERS.register("timm")
def timm_tower(
    model_name: str = "vit_base_patch16_224",
    weights: str | None = None,
    layer: int = -1,
    preprocess: dict[str, Any] | None = None,
    **kwargs: Any,
) -> TimmTower:
    return TimmTower(model_name, weights, layer, preprocess, **kwargs)


@ENCODERS.register("timm_tiny")
def timm_tiny(layer: int = -1, preprocess: dict[str, Any] | None = None) -> TimmTower:
    """2-block ViT at 32 px, patch 8 (16 tokens of width 192): tests."""
    return TimmTower(
        "vit_tiny_patch16_224",
        None,
        layer,
        {"image_size": 32, **(preprocess or {})},
        img_size=32,
        patch_size=8,
        depth=2,
    )


@ENCODERS.register("open_clip")
def open_clip_tower(
    model_name: str = "ViT-B-32", weights: str | None = None, layer: int = -1, preprocess: dict[str, Any] | None = None
) -> OpenClipTower:
    return OpenClipTower(model_name, weights, layer, preprocess)


@ENCODERS.register("open_clip_tiny")
def open_clip_tiny(layer: int = -1, preprocess: dict[str, Any] | None = None) -> OpenClipTower:
    """2-layer, 64-wide open_clip ViT at 32 px, patch 8: tests."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    visual = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).visual
    return OpenClipTower(None, None, layer, {"image_size": 32, **(preprocess or {})}, visual=visual)


@ENCODERS.register("siglip")
def siglip(weights: str | None = None, layer: int = -2, preprocess: dict[str, Any] | None = None) -> SiglipTower:
    """SigLIP or SigLIP2 from a local folder (LLaDA-V: so400m patch14 384, second-to-last layer)."""
    if weights is None:
        raise ValueError("the 'siglip' encoder needs weights: a local SigLIP / SigLIP2 folder")
    return SiglipTower(weights, layer, preprocess)


@ENCODERS.register("siglip_tiny")
def siglip_tiny(layer: int = -2, preprocess: dict[str, Any] | None = None) -> SiglipTower:
    """3-layer, 32-wide SigLIP vision model at 32 px, patch 8: tests."""
    from transformers import SiglipVisionConfig

    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    return SiglipTower(None, layer, preprocess, config=config)
