"""Building the model an experiment names: backbone, modality adapters, LoRA, and what trains.

Parameters belong to parts: ``backbone``, ``encoder`` and ``projector`` (of every modality), and
``lora``. `train.trainable` lists the parts that train (LLaDA-V stage 1: the projector only; stage 2:
all three; Whisper-LLaDA: LoRA and the adapter), `train.part_lr` gives a part its own learning rate.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from multimodal.backbone import LLaDABackbone, create_backbone
from multimodal.backbone.convert import load_llada_checkpoint
from multimodal.checkpoint import load_weights
from multimodal.lora import add_lora
from multimodal.model import MultimodalDiffusionModel
from multimodal.train.config import ExperimentConfig
from multimodal.types import ModalityIO

log = logging.getLogger(__name__)
PARTS = ("backbone", "encoder", "projector", "lora")


def part_of(name: str) -> str:
    """The part a parameter name belongs to."""
    if ".lora_" in name or name.startswith("lora_"):
        return "lora"
    if name.startswith("adapters."):
        return name.split(".")[2]  # adapters.<modality>.<encoder|projector>.
    return "backbone"


def checkpoint_folder(path: Path) -> Path:
    """A checkpoint folder, or a run folder whose checkpoints/last is used."""
    if (path / "model.safetensors").is_file():
        return path
    last = path / "checkpoints" / "last"
    if (last / "model.safetensors").is_file():
        return last
    raise FileNotFoundError(f"{path} is neither a checkpoint folder nor a run folder with checkpoints/last")


def build_model(config: ExperimentConfig, placeholder_ids: dict[str, int]) -> nn.Module:
    """The backbone (fresh, or a released LLaDA folder from `init_from`) plus adapters, LoRA and freezing.

    `init_from` may also name one of our run / checkpoint folders of the same architecture (LLaDA-V
    stage 2 resumes from stage 1 this way); it is loaded after the model is assembled.
    """
    from encoders import ModalityAdapter, create_encoder, create_projector

    torch.manual_seed(config.seed)  # weight initialisation only
    source = Path(config.init_from) if config.init_from else None
    if config.dsm is not None:
        return _build_dsm(config, source)
    if source is not None and (source / "config.json").is_file():
        backbone, _ = load_llada_checkpoint(source)
        want = config.backbone
        if (backbone.config.vocab_size, backbone.config.d_model) != (want.vocab_size, want.d_model):
            raise ValueError(f"init_from {source} has shape {backbone.config} but the experiment asks for {want}")
    else:
        backbone = create_backbone(config.backbone)
    model: nn.Module = backbone
    if config.modalities:
        adapters = {}
        for name, m in config.modalities.items():
            encoder = create_encoder(m.encoder, **m.encoder_args)
            projector = create_projector(m.projector, encoder.output_dim, backbone.config.d_model, **m.projector_args)
            adapters[name] = ModalityAdapter(encoder, projector)
        model = MultimodalDiffusionModel(backbone, adapters, placeholder_ids)
    if config.train.lora is not None:
        lora = config.train.lora
        add_lora(backbone, tuple(lora.targets), lora.rank, lora.alpha)
    if source is not None and not (source / "config.json").is_file():
        load_weights(checkpoint_folder(source), model)
        log.info("initialised from %s", source)
    apply_trainable(model, config)
    return model


def _build_dsm(config: ExperimentConfig, source: Path | None) -> nn.Module:
    """ESM2 with DSM's head as the diffusion model (protein tokens are the vocabulary)."""
    from encoders.protein import ESM_PRESETS, build_esm2, load_esm2
    from multimodal.backbone.esm import ESMDiffusion

    dsm = config.dsm
    if dsm.weights:
        body = load_esm2(dsm.weights)
    elif dsm.preset in ESM_PRESETS:
        body = build_esm2(*ESM_PRESETS[dsm.preset])
    else:
        raise ValueError(f"unknown ESM2 preset '{dsm.preset}' (known: {', '.join(ESM_PRESETS)})")
    model = ESMDiffusion(
        body, dsm.preset if not dsm.weights else Path(dsm.weights).name, dsm.logit_cap, dsm.max_seq_len
    )
    if source is not None:
        load_weights(checkpoint_folder(source), model)
    return model


def apply_trainable(model: nn.Module, config: ExperimentConfig) -> None:
    """Freeze every part not in `train.trainable` (LoRA always trains; frozen encoders may keep groups)."""
    unknown = set(config.train.trainable) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown trainable parts {sorted(unknown)} (choose from {', '.join(PARTS)})")
    for name, param in model.named_parameters():
        part = part_of(name)
        param.requires_grad_(part == "lora" or part in config.train.trainable)
    if isinstance(model, MultimodalDiffusionModel) and "encoder" not in config.train.trainable:
        for name, m in config.modalities.items():
            if m.unlocked_groups:
                model.adapters[name].encoder.lock(m.unlocked_groups)
    counts = {p: 0 for p in PARTS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[part_of(name)] += param.numel()
    log.info("trainable parameters: %s", ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items() if v))


def modality_io(model: nn.Module) -> dict[str, ModalityIO]:
    """What tasks need to lay out each modality of `model` (empty for a text-only backbone)."""
    if not isinstance(model, MultimodalDiffusionModel):
        return {}
    return {
        name: ModalityIO(name, model.placeholder_ids[name], adapter.num_tokens, adapter.encoder.preprocess)
        for name, adapter in model.adapters.items()
    }


def backbone_of(model: nn.Module) -> LLaDABackbone:
    return model.backbone if isinstance(model, MultimodalDiffusionModel) else model
