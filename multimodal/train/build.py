"""Building what an experiment names: the model (backbone, modality adapters, LoRA, what trains) and
the run around it (task, tokenizer, model, folder), freshly built or loaded from a run folder.

The run lives here rather than beside training (run.py) so that training, evaluation and the
commands that only load a run import in one direction: run.py -> evaluate.py -> build.py.

Parameters belong to parts: ``backbone``, ``encoder`` and ``projector`` (of every modality), and
``lora``. `train.trainable` lists the parts that train (LLaDA-V stage 1: the projector only; stage 2:
all three; Whisper-LLaDA: LoRA and the adapter), `train.part_lr` gives a part its own learning rate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.backbone import LLaDABackbone
from multimodal.backbone.families import family_of
from multimodal.checkpoint import CONFIG, load_weights
from multimodal.config import ConfigError
from multimodal.device import pick_device
from multimodal.lora import add_lora, load_peft_lora
from multimodal.model import MultimodalDiffusionModel
from multimodal.sampling.engine import Engine
from multimodal.tokenizer import BuiltinTokenizer, HFTokenizer, build_tokenizer, load_tokenizer
from multimodal.train.config import TRAINABLE_PARTS, ExperimentConfig, experiment_from_text
from multimodal.types import ModalityIO
from tasks import Task, create_task

log = logging.getLogger(__name__)


@contextmanager
def _named_args(where: str) -> Iterator[None]:
    """An unknown keyword in a builder's arguments (``projector_args: {featur_mask: ...}``) becomes one
    ConfigError naming the config key, not a traceback from inside the builder."""
    try:
        yield
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(f"{where}: {err}") from None


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
    """The backbone of the run's family (fresh, or a released folder in `init_from` the family converts)
    plus adapters, LoRA and freezing where the family takes them (multimodal/backbone/families.py).

    `init_from` may also name one of our run / checkpoint folders of the same architecture (LLaDA-V
    stage 2 resumes from stage 1 this way); it is loaded after the model is assembled.
    """
    from encoders import ModalityAdapter, create_encoder, create_projector

    torch.manual_seed(config.seed)  # weight initialisation only
    source = Path(config.init_from) if config.init_from else None
    family, settings = family_of(config)
    backbone = family.build(settings, source)
    model: nn.Module = backbone
    if family.takes_modalities and config.modalities:
        adapters = {}
        for name, m in config.modalities.items():
            with _named_args(f"modalities.{name}.encoder_args"):
                encoder = create_encoder(m.encoder, **m.encoder_args)
            with _named_args(f"modalities.{name}.projector_args"):
                projector = create_projector(
                    m.projector, encoder.output_dim, backbone.config.d_model, **m.projector_args
                )
            adapters[name] = ModalityAdapter(encoder, projector)
        model = MultimodalDiffusionModel(backbone, adapters, placeholder_ids)
    if family.takes_modalities and config.train.lora is not None:
        lora = config.train.lora
        add_lora(backbone, tuple(lora.targets), lora.rank, lora.alpha)
        if lora.weights:
            from encoders.weights import load_state_dict

            count = load_peft_lora(backbone, load_state_dict(lora.weights), lora.weights)
            log.info("LoRA weights of %d layers from %s", count, lora.weights)
    if source is not None and not family.converts(source):
        _initialise(model, source)
    if family.takes_modalities:
        apply_trainable(model, config)
    return model


def _initialise(model: nn.Module, source: Path) -> None:
    """Load a run or checkpoint folder into the whole model (strict) and say what came from where."""
    folder = checkpoint_folder(source)
    load_weights(folder, model)
    parts = sorted({part_of(name) for name, _ in model.named_parameters()})
    count = sum(p.numel() for p in model.parameters()) / 1e6
    log.info("initialised from %s: every tensor (%.2fM parameters: %s)", folder, count, ", ".join(parts))


def apply_trainable(model: nn.Module, config: ExperimentConfig) -> None:
    """Freeze every part not in `train.trainable` (LoRA always trains; frozen encoders may keep groups)."""
    for name, param in model.named_parameters():
        part = part_of(name)
        param.requires_grad_(part == "lora" or part in config.train.trainable)
    if isinstance(model, MultimodalDiffusionModel) and "encoder" not in config.train.trainable:
        for name, m in config.modalities.items():
            if m.unlocked_groups:
                model.adapters[name].encoder.lock(m.unlocked_groups)
    counts = {p: 0 for p in TRAINABLE_PARTS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[part_of(name)] += param.numel()
    log.info("trainable parameters: %s", ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items() if v))


def modality_io(model: nn.Module) -> dict[str, ModalityIO]:
    """What tasks need to lay out each modality of `model` (empty for a text-only backbone)."""
    return model.modality_io() if isinstance(model, MultimodalDiffusionModel) else {}


def backbone_of(model: nn.Module) -> LLaDABackbone:
    return model.backbone if isinstance(model, MultimodalDiffusionModel) else model


@dataclass
class Run:
    """A built or loaded experiment: config, task, tokenizer, model and its folder (and, after a
    multi-process `train`, this process's global rank: only rank 0 should evaluate)."""

    config: ExperimentConfig
    task: Task
    tokenizer: BuiltinTokenizer | HFTokenizer
    model: nn.Module
    folder: Path
    rank: int = 0
    saved_sampler: Any = None  # a loaded run: the sampler config its checkpoint was saved with (before --set)
    saved_config: Any = None  # a loaded run: the whole experiment config it was saved with (before --set)
    stopped_at: int | None = None  # a training run stopped early by Ctrl-C: the step its state was saved at

    @property
    def modalities(self) -> dict[str, ModalityIO]:
        return modality_io(self.model)

    def engine(self, batch_size: int | None = None) -> Engine:
        """The decoding engine of this run: its model on `device`, its sampler, seed and evaluation batch size."""
        cfg = self.config
        return Engine(
            self.model,
            self.tokenizer,
            cfg.sampler,
            device=pick_device(cfg.device),
            seed=cfg.seed,
            batch_size=batch_size or cfg.train.eval_batch_size,
        )


def build_run(config: ExperimentConfig, tokenizer: BuiltinTokenizer | HFTokenizer | None = None) -> Run:
    """Create the task, the tokenizer (built from the task's training texts plus the modality
    placeholders) and the model."""
    task = create_task(config.task)
    placeholders = [m.placeholder for m in config.modalities.values()]
    written = getattr(config.task, "placeholder", None)  # a task that names the token it writes (asr)
    audio = config.modalities.get("audio")
    if written is not None and audio is not None and audio.placeholder != written:
        raise ValueError(
            f"task.placeholder is {written!r} but modalities.audio.placeholder is {audio.placeholder!r}; "
            "the prompt must carry the token the model splices at"
        )
    tokenizer = tokenizer or build_tokenizer(config.tokenizer, task.texts(), specials=placeholders)
    family, settings = family_of(config)
    family.check_vocabulary(settings, len(tokenizer))
    placeholder_ids = {name: tokenizer.token_id(m.placeholder) for name, m in config.modalities.items()}
    model = build_model(config, placeholder_ids)
    folder = Path(config.train.output_dir) / config.name
    return Run(config, task, tokenizer, model, folder)


def load_run(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Run:
    """Load a run or checkpoint folder: config (with --set overrides), tokenizer and weights."""
    folder = checkpoint_folder(Path(path))
    text = (folder / CONFIG).read_text()
    config = experiment_from_text(text, overrides)
    tok_file = folder / "tokenizer.json"
    tokenizer = load_tokenizer(tok_file if tok_file.is_file() else folder / "tokenizer")
    config = replace(config, init_from=None)
    run = build_run(config, tokenizer)
    run.saved_config = replace(experiment_from_text(text), init_from=None) if overrides else config
    run.saved_sampler = run.saved_config.sampler
    load_weights(folder, run.model)
    # the run folder for its last checkpoint; an intermediate checkpoint keeps its evaluations to itself
    run.folder = folder.parent.parent if folder.name == "last" and folder.parent.name == "checkpoints" else folder
    return run
