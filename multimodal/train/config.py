"""The experiment config: one YAML file (configs/experiment/*.yaml) resolved into these dataclasses.

Sections: backbone (a registered preset plus overrides), tokenizer, task (selected by its `name`),
diffusion (the objective), sampler (selected by its `name`: the decoding used for evaluation and
`mmdiff sample`), train (optimiser, schedule, trainer), and for a post-training stage ``vrpo`` or
``grpo`` (posttrain_config.py). Unknown keys fail with the closest valid
name; the resolved config, every default included, is written next to every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from multimodal.backbone.config import BACKBONE_PRESETS, BackboneConfig
from multimodal.backbone.esm import DSMModelConfig
from multimodal.backbone.families import family_of
from multimodal.config import ConfigError, apply_overrides, from_dict, load_yaml
from multimodal.diffusion.objective import DiffusionConfig
from multimodal.registry import suggest
from multimodal.sampling import SamplerConfig, sampler_config_class
from multimodal.tokenizer import TokenizerConfig
from multimodal.train.optim import OptimConfig
from multimodal.train.posttrain_config import GRPOConfig, VRPOConfig, check_posttrain
from tasks import TaskConfig, task_config_class

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class TrainConfig(OptimConfig):
    """Optimisation and trainer settings (lr, min_lr_ratio, warmup_steps, weight_decay, betas, grad_clip:
    `OptimConfig`, train/optim.py).

    Attributes:
        max_steps: optimiser steps.
        batch_size: sequences per step and process (the global batch is batch_size x devices x num_nodes).
        pack_length: pack token-only training samples into rows of this many tokens, with per-document
            attention and positions (multimodal/train/packing.py); 0 = off. batch_size then counts
            documents per step and the number of rows per step varies. Needs the LLaDA backbone and no
            modalities.
        precision: ``auto`` (bf16 mixed on a bf16-capable GPU, else fp32), or a Lightning precision.
        accelerator: Lightning accelerator (auto, cpu, gpu).
        strategy: ``auto`` (one process), ``ddp`` (one process per device, started by torchrun, SLURM or
            Lightning), ``ddp_spawn`` (Lightning spawns the processes; slower start, works anywhere) or
            ``fsdp`` (fully sharded weights, gradients and optimiser state, one unit per transformer block;
            CUDA only).
        devices: devices (processes) per node.
        num_nodes: nodes (machines) in the run.
        activation_checkpointing: recompute each transformer block's activations in the backward pass
            (fsdp only): less memory for about one more forward.
        compile: compile each transformer block with torch.compile (regional compilation: one
            compiled block reused by every layer, quick to compile, composes with FSDP's per-block
            units and activation checkpointing); models without LLaDA blocks compile whole.
        on_nonfinite: what a NaN or infinite loss does: ``stop`` raises NonFiniteLoss naming the step and
            the last checkpoint; ``skip`` drops the batch (no update; it still counts as a step), logs a
            warning and counts it as ``nonfinite_skipped``.
        resume: continue from the newest complete training state in the run folder
            (checkpoints/state_XXXXXXX: weights, optimiser, scheduler, step, data position, RNG), or
            start from step 0 when there is none, so a preempted job can be requeued with the same
            command. The run's config must be unchanged (the data order and schedules depend on it).
        streaming: read the task's training WebDataset shards as a stream (multimodal/train/streaming.py:
            per-rank and per-worker shard splits, a shuffle buffer, resumable position) instead of
            materialising the split.
        shuffle_buffer: items in each DataLoader worker's shuffle buffer (streaming).
        sample_budget: streaming: training items over all ranks, after which the stream ends (None: endless;
            max_steps ends the run).
        num_workers: DataLoader worker processes.
        cache_media: preprocess each training media item once and keep the result in memory
            (multimodal/train/media_cache.py): for small materialised corpora, such as the spoken one,
            whose features would otherwise be recomputed every epoch (each worker keeps its own copy).
        cache_features: keep each frozen tower's output per distinct media item in memory
            (multimodal/train/feature_cache.py): a frozen-tower stage (LLaDA-V stage 1, or stage 2 with
            the tower frozen) then runs each tower once per item instead of once per step. Needs every
            tower frozen ('encoder' not in `trainable`, `unlocked_groups` 0); cached features are the
            tower's eval-mode outputs.
        bucket_batches: length bucketing: sort windows of this many global batches by length so a
            batch holds similar lengths (0: plain shuffling). See multimodal/train/sampler.py.
        threads: CPU threads for torch (None: leave torch's default).
        log_every: steps between metric lines.
        checkpoint_every: steps between checkpoints (weights, and a training state for `resume`), so a
            killed run loses at most this many steps; 0: only the final one.
        eval_at_end: evaluate on `eval_splits` after training.
        eval_splits: the splits evaluated after training (the embedded speech corpus adds ``test_accents``).
        eval_limit: evaluate on at most this many examples (None: all).
        eval_every: decode this many validation examples (`val_limit`) every this many steps and log
            the task metrics as ``val/<metric>`` (0: never), to record the learning curve.
        val_limit: validation examples decoded at each `eval_every`.
        eval_batch_size: prompts decoded together during evaluation.
        output_dir: parent folder of run folders (a run is output_dir/<experiment name>).
        trainable: parts that train: ``backbone``, ``encoder``, ``projector`` (others are frozen;
            LoRA adapters always train). LLaDA-V stage 1: ``[projector]``; stage 2: all three.
        part_lr: learning rate per part (``encoder``, ``projector``, ``backbone``, ``lora``); others use lr.
        lora: put LoRA adapters on the backbone (then freeze ``backbone`` in `trainable`).
        loggers: Lightning loggers besides metrics.jsonl, written under the run folder: ``csv``
            (csv/metrics.csv) and ``tensorboard`` (tensorboard/version_N/; needs the tensorboard
            package, extra mmdiff[observe]).
    """

    max_steps: int = 1000
    batch_size: int = 64
    pack_length: int = 0
    precision: str = "auto"
    accelerator: str = "auto"
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    activation_checkpointing: bool = False
    compile: bool = False
    on_nonfinite: Literal["stop", "skip"] = "stop"
    resume: bool = False
    bucket_batches: int = 0
    streaming: bool = False
    shuffle_buffer: int = 1000
    sample_budget: int | None = None
    num_workers: int = 0
    cache_media: bool = False
    cache_features: bool = False
    threads: int | None = None
    log_every: int = 20
    checkpoint_every: int = 500
    eval_at_end: bool = True
    eval_splits: tuple[str, ...] = ("test",)
    eval_limit: int | None = None
    eval_every: int = 0
    val_limit: int = 500
    eval_batch_size: int = 128
    output_dir: str = "runs"
    trainable: list[str] = field(default_factory=lambda: ["backbone", "encoder", "projector"])
    part_lr: dict[str, float] = field(default_factory=dict)
    lora: LoRAConfig | None = None
    loggers: list[str] = field(default_factory=list)


@dataclass
class ModalityConfig:
    """One modality front end: an encoder, a projector into the backbone width, a placeholder token.

    Attributes:
        encoder: registered encoder name (``mmdiff list encoder``).
        encoder_args: keyword arguments of the encoder builder (weights path, layer, ...).
        projector: registered projector name.
        projector_args: keyword arguments of the projector builder.
        placeholder: the token written in prompts where the features go.
        unlocked_groups: when the encoder is frozen, keep this many of its last layer groups trainable.
    """

    encoder: str = "timm_tiny"
    encoder_args: dict[str, Any] = field(default_factory=dict)
    projector: str = "mlp2x_gelu"
    projector_args: dict[str, Any] = field(default_factory=dict)
    placeholder: str = "<image>"
    unlocked_groups: int = 0


@dataclass
class LoRAConfig:
    """LoRA on the backbone (Whisper-LLaDA: rank 8, alpha 32 on q/k/v); `weights`: trained adapters saved
    by peft on the LLaDA layout (Whisper-LLaDA's ``.pth``), loaded into them (multimodal/lora.py)."""

    rank: int = 8
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    weights: str | None = None


@dataclass
class ExperimentConfig:
    """Everything a run needs, resolved from YAML."""

    name: str = "experiment"
    seed: int = 0
    backbone: BackboneConfig = field(
        default_factory=lambda: BACKBONE_PRESETS.get("llada_tiny"), metadata={"presets": BACKBONE_PRESETS.get}
    )
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    task: TaskConfig = field(default_factory=TaskConfig, metadata={"select": task_config_class})
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig, metadata={"select": sampler_config_class})
    train: TrainConfig = field(default_factory=TrainConfig)
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
    dsm: DSMModelConfig | None = None
    vrpo: VRPOConfig | None = None
    grpo: GRPOConfig | None = None
    init_from: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"


def resolve_config_path(name_or_path: str) -> Path:
    """A path as given, or the name of a file in configs/experiment/ (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_ROOT / "experiment" / name_or_path, CONFIG_ROOT / "experiment" / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in (CONFIG_ROOT / "experiment").glob("*.yaml"))
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor an experiment in configs/experiment ({', '.join(known)})"
    )


def load_experiment(name_or_path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (path or configs/experiment name), apply --set overrides, validate."""
    data = load_yaml(resolve_config_path(str(name_or_path)))
    return check_experiment(from_dict(ExperimentConfig, apply_overrides(data, overrides)))


def experiment_from_text(text: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Parse a resolved config saved next to a checkpoint (with --set overrides), validated."""
    import yaml

    data = yaml.safe_load(text) or {}
    return check_experiment(from_dict(ExperimentConfig, apply_overrides(data, overrides)))


TRAINABLE_PARTS = ("backbone", "encoder", "projector", "lora")


def check_experiment(config: ExperimentConfig) -> ExperimentConfig:
    """The checks that span several fields, made when a config is resolved (so `show-config` refuses
    what `train` would, before any data is read). What depends on the machine (CUDA for fsdp) or on
    the data (the tokenizer's size) is checked when the run is built. Returns the config."""
    import encoders  # noqa: F401  (fills the encoder and projector registries; heavy libraries load later)
    from encoders import ENCODERS, PROJECTORS
    from tasks import create_task

    cfg = config.train
    if cfg.max_steps <= 0:
        raise ConfigError(f"train.max_steps must be positive, got {cfg.max_steps}")
    if cfg.pack_length and (not family_of(config)[0].packs or config.modalities):
        raise ConfigError("train.pack_length needs a token-only task on the LLaDA backbone (no dsm, no modalities)")
    if cfg.pack_length > config.backbone.max_seq_len:
        raise ConfigError(
            f"train.pack_length {cfg.pack_length} exceeds backbone.max_seq_len {config.backbone.max_seq_len}"
        )
    if cfg.activation_checkpointing and cfg.strategy != "fsdp":
        raise ConfigError("train.activation_checkpointing needs train.strategy=fsdp")
    if cfg.strategy == "fsdp" and cfg.eval_every:
        raise ConfigError("train.eval_every needs the whole model on rank 0; set it to 0 with train.strategy=fsdp")
    if cfg.streaming and (cfg.bucket_batches or cfg.cache_media):
        key = "bucket_batches" if cfg.bucket_batches else "cache_media"
        raise ConfigError(f"train.{key} needs the whole training set; it does not combine with train.streaming")
    if cfg.cache_features:
        if not config.modalities:
            raise ConfigError("train.cache_features needs a modality tower (the experiment has no modalities)")
        unlocked = [name for name, m in config.modalities.items() if m.unlocked_groups]
        if "encoder" in cfg.trainable or unlocked:
            where = f"modalities.{unlocked[0]}.unlocked_groups > 0" if unlocked else "'encoder' is in train.trainable"
            raise ConfigError(f"train.cache_features caches frozen towers only, but {where}")
    unknown = sorted(set(cfg.trainable) - set(TRAINABLE_PARTS))
    if unknown:
        raise ConfigError(f"train.trainable: unknown parts {unknown} (choose from {', '.join(TRAINABLE_PARTS)})")
    unknown = sorted(set(cfg.part_lr) - set(TRAINABLE_PARTS))
    if unknown:
        raise ConfigError(f"train.part_lr: unknown parts {unknown} (choose from {', '.join(TRAINABLE_PARTS)})")
    for name, m in config.modalities.items():
        for kind, registry, value in (("encoder", ENCODERS, m.encoder), ("projector", PROJECTORS, m.projector)):
            if value not in registry:
                close = suggest(value, registry.names())
                raise ConfigError(f"modalities.{name}.{kind}: unknown {kind} '{value}'{close}")
    task = create_task(config.task)
    _check_posttrain(config, task)
    for split in cfg.eval_splits if cfg.eval_at_end else ():
        try:
            task.check_split(split)
        except KeyError as err:
            raise ConfigError(f"train.eval_splits: {err.args[0]}") from None
    return config


def _check_posttrain(config: ExperimentConfig, task: Any) -> None:
    """A vrpo or grpo section's checks: one stage, budgets, the rollout sampler, known rewards and split."""
    from multimodal.sampling.base import merge_sampler
    from multimodal.train.rewards import REWARDS

    try:
        check_posttrain(config.vrpo, config.grpo, config.train.pack_length, config.train.streaming)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    grpo = config.grpo
    if grpo is None:
        return
    merge_sampler(config.sampler, grpo.rollout, fixed_by="grpo.rollout")
    for name in grpo.rewards:
        if not name.startswith("task.") and name not in REWARDS:
            close, known = suggest(name, REWARDS.names()), ", ".join(REWARDS.names())
            raise ConfigError(f"grpo.rewards: unknown reward '{name}'{close} (known: {known}, or task.<metric>)")
    try:
        task.check_split(grpo.split)
    except KeyError as err:
        raise ConfigError(f"grpo.split: {err.args[0]}") from None
