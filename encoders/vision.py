"""Vision towers: timm ViTs, open_clip image towers, SigLIP / SigLIP2 through transformers.

Every tower returns patch features (B, N, C) of a selectable layer (the LLaDA-V default is SigLIP2
so400m patch14 at 384 px, second-to-last layer, 729 tokens), without class / register tokens, and
carries its preprocessing (image size, mean / std, resize policy, interpolation, crop_pct) in its spec,
taken from the library's own config: timm's data config (`timm.data.resolve_data_config`, crop_pct and
crop mode included) and open_clip's model preprocess config (`open_clip.get_model_preprocess_cfg`), so
the pixels equal those of the library's evaluation transform (tested). SigLIP2 NaFlex checkpoints
(variable-resolution patch sequences) are refused with an error; fixed-resolution SigLIP2 loads.
Real weights come only from local paths; a missing one is an error naming it. Each family has a tiny
random preset for tests, checked for parity against the library's own model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoders.base import ENCODERS, EncoderSpec, ModalityEncoder
from encoders.weights import load_into, load_state_dict, strip_prefix

RESIZE_POLICIES = ("squash", "shortest", "longest", "pad")


def image_transform(preprocess: dict[str, Any]):
    """A callable image (PIL, path or encoded bytes) -> (3, H, W) float tensor for the given settings.

    Keys: image_size (int), mean, std (3 floats), interpolation (bilinear / bicubic), crop_pct (default 1),
    fill (padding colour of ``longest``: one 0-255 value or three), and resize:

    * ``shortest``: shortest side to floor(image_size / crop_pct), then the centre image_size square
      (timm's ``center`` crop mode, with its crop_pct; open_clip's ``shortest`` with crop_pct 1);
    * ``squash``: both sides to floor(image_size / crop_pct), ignoring the aspect ratio, then the centre
      square (timm's ``squash``; open_clip's ``squash`` with crop_pct 1);
    * ``longest``: longest side to floor(image_size / crop_pct) keeping the ratio, then centred on an
      image_size square of `fill` (timm's ``border``, open_clip's ``longest``);
    * ``pad``: pad to a square with the mean colour, then resize (LLaVA's "pad" aspect mode).

    Resizing and cropping run on the PIL image, as in timm and open_clip, so the pixels equal theirs.
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
    crop_pct = float(preprocess.get("crop_pct", 1.0))
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    scale = math.floor(size / crop_pct)
    if policy == "shortest":
        steps: list[Any] = [T.Resize(scale, interpolation=interp), T.CenterCrop(size), T.ToImage()]
    elif policy == "squash":
        steps = [T.Resize((scale, scale), interpolation=interp), T.CenterCrop(size), T.ToImage()]
    elif policy == "longest":
        fill = preprocess.get("fill", 0)
        steps = [_ResizeLongest(scale, interp), T.ToImage(), _CentreOnSquare(size, fill)]
    else:  # pad
        steps = [T.ToImage(), _PadToSquare(mean), T.Resize((size, size), interpolation=interp, antialias=True)]
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    transform = T.Compose(steps)

    def apply(image: Any) -> torch.Tensor:
        return transform(open_rgb(image))

    return apply


def open_rgb(image: Any) -> Any:
    """An RGB PIL image from a PIL image, a path or encoded bytes."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        import io

        with Image.open(io.BytesIO(image)) as im:
            return im.convert("RGB")
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image) and image.mode != "RGB":
        return image.convert("RGB")
    return image


class _ResizeLongest(nn.Module):
    """Scale a PIL image so that its longest side is `side`, keeping the ratio (sides rounded)."""

    def __init__(self, side: int, interpolation: Any):
        super().__init__()
        self.side, self.interpolation = side, interpolation

    def forward(self, image: Any) -> Any:
        from torchvision.transforms.v2 import functional as F

        w, h = image.size
        ratio = max(h / self.side, w / self.side)
        return F.resize(image, [round(h / ratio), round(w / ratio)], interpolation=self.interpolation)


class _CentreOnSquare(nn.Module):
    """Centre a (3, h, w) uint8 image on a side x side canvas of `fill` (cropping what sticks out)."""

    def __init__(self, side: int, fill: int | list[int]):
        super().__init__()
        self.side, self.fill = side, fill

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        h, w = image.shape[-2:]
        pad_w, pad_h = max(self.side - w, 0), max(self.side - h, 0)
        if pad_w or pad_h:
            image = F.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=self.fill)
        return F.center_crop(image, [self.side, self.side])


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


def _square(size: Any, source: str) -> int:
    sides = {int(x) for x in size} if isinstance(size, (tuple, list)) else {int(size)}
    if len(sides) != 1:
        raise ValueError(f"{source}: non-square input size {tuple(size)} is not supported (square towers only)")
    return sides.pop()


def timm_preprocess(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our settings for timm's evaluation transform of a data config (`timm.data.resolve_data_config`):
    input size, mean / std, interpolation, crop_pct and crop mode (center, squash, border)."""
    modes = {"center": "shortest", "squash": "squash", "border": "longest"}
    mode = cfg.get("crop_mode") or "center"
    if mode not in modes:
        raise ValueError(f"timm crop_mode '{mode}' is not supported (center, squash, border)")
    mean = list(cfg["mean"])
    return {
        "image_size": _square(cfg["input_size"][-2:], "timm data config"),
        "mean": mean,
        "std": list(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": float(cfg.get("crop_pct") or 0.875),  # timm's DEFAULT_CROP_PCT when unset
        "resize": modes[mode],
        "fill": [round(255 * m) for m in mean],  # border mode pads with the mean colour
    }


def open_clip_preprocess(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our settings for open_clip's evaluation transform of a model's preprocess config
    (`open_clip.get_model_preprocess_cfg`; open_clip's PreprocessCfg defaults fill what it omits)."""
    from open_clip.transform import PreprocessCfg

    full = PreprocessCfg(**{k: v for k, v in cfg.items() if k in PreprocessCfg.__dataclass_fields__})
    if full.resize_mode not in ("shortest", "squash", "longest"):
        raise ValueError(f"open_clip resize_mode '{full.resize_mode}' is not supported (shortest, squash, longest)")
    return {
        "image_size": _square(full.size, "open_clip preprocess config"),
        "mean": list(full.mean),
        "std": list(full.std),
        "interpolation": full.interpolation,
        "resize": full.resize_mode,
        "fill": full.fill_color,
    }


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
        settings = {**timm_preprocess(timm.data.resolve_data_config({}, model=model)), **(preprocess or {})}
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
            visual = open_clip.create_model(model_name, pretrained=None).visual  # carries its preprocess_cfg
        if weights:
            state = load_state_dict(weights)
            state = strip_prefix(state, "visual.") if any(k.startswith("visual.") for k in state) else state
            load_into(visual, state, weights)
        settings = {**open_clip_preprocess(open_clip.get_model_preprocess_cfg(visual)), **(preprocess or {})}
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
            # SigLIP2 NaFlex takes a variable-length sequence of patches with their grid shapes, not a fixed
            # square image; LLaDA-V's siglip2-so400m-patch14-384 is a fixed-resolution (SiglipVisionModel) one
            raise ValueError(
                f"{folder or 'config'}: SigLIP2 NaFlex checkpoints (model_type siglip2_vision_model) are not "
                "supported; use a fixed-resolution SigLIP / SigLIP2 checkpoint (model_type siglip or "
                "siglip_vision_model, e.g. siglip2-so400m-patch14-384)"
            )
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
