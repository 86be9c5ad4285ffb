r"""Training a run: the Lightning trainer, its data loader, checkpoints and resumption (the run itself,
built or loaded, is build.py's).

A run folder (train.output_dir / name) holds ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/step_XXXXXXX/`` and ``checkpoints/last/`` (safetensors + config + tokenizer, see
multimodal.checkpoint), ``checkpoints/state_XXXXXXX/`` (training states for ``train.resume``, resume.py)
and ``eval/<split>_{predictions.jsonl,metrics.json}`` (evaluate.py).

Multi-process and multi-node
----------------------------
``train.strategy=ddp`` runs one process per device; each process reads its own slice of every global
batch (multimodal/train/sampler.py: one endless order drawn from ``seed``), so ``train.batch_size`` is
per process. Only global rank 0 writes checkpoints and metrics.jsonl, validates and evaluates. Launch
with torchrun (one command per node)::

    torchrun --nproc_per_node N -m multimodal.cli train -c <experiment> \
        --set train.strategy=ddp --set train.devices=N --set train.num_nodes=M

(multi-node: add ``--nnodes M --node_rank R --master_addr HOST --master_port PORT``), or under SLURM
with one task per device, ``srun python -m multimodal.cli train ...`` with the same settings in an
allocation of ``--nodes M --ntasks-per-node N`` (Lightning reads SLURM_NTASKS, SLURM_PROCID, ...).
``train.strategy=ddp_spawn`` needs no launcher: Lightning starts the N processes itself (no
multi-node) and hands the trained weights back to the calling process. ``train.strategy=fsdp`` shards
the model per transformer block and needs CUDA; evaluation after training reads the written checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.backbone.layers import LLaDABlock
from multimodal.checkpoint import CONFIG, link_checkpoint, load_weights, save_checkpoint
from multimodal.config import ConfigError, dump
from multimodal.tokenizer import BuiltinTokenizer, HFTokenizer
from multimodal.train.build import Run, build_run
from multimodal.train.config import ExperimentConfig, TrainConfig, check_experiment
from multimodal.train.feature_cache import install_feature_caches, remove_feature_caches
from multimodal.train.media_cache import cached_modalities
from multimodal.train.packing import PackedCollate
from multimodal.train.resume import StateCheckpointIO, StopOnInterrupt, TrainingState, latest_state, read_position
from multimodal.train.sampler import ResumableBatchSampler
from multimodal.types import ModalityIO
from tasks import create_task

log = logging.getLogger(__name__)


def _tokenizer_writer(tokenizer: BuiltinTokenizer | HFTokenizer) -> dict[str, Any]:
    if not isinstance(tokenizer, HFTokenizer):  # built-in and ESM tokenizers are one JSON file
        return {"tokenizer.json": tokenizer.save}
    return {"tokenizer": lambda p: (p.mkdir(), tokenizer.save(p))}


class _GatheredWeights:
    """Stands in for the model in save_checkpoint when the weights were gathered from FSDP shards."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k.removeprefix("model."): v for k, v in state.items()}  # DiffusionModule.model.<name>

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state


def save_run_checkpoint(run: Run, step: int, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoints/step_XXXXXXX, and checkpoints/last as hard links to it; returns the step folder.

    `state` is the LightningModule's gathered state dict under FSDP (None: save `run.model` as it is).
    """
    text = dump(run.config)
    writers = _tokenizer_writer(run.tokenizer)
    folder = run.folder / "checkpoints"
    model = run.model if state is None else _GatheredWeights(state)
    saved = save_checkpoint(folder / f"step_{step:07d}", model, text, writers)
    link_checkpoint(saved, folder / "last")
    return saved


def _strategy(cfg: TrainConfig) -> Any:
    """The Lightning strategy train.strategy names, after checking what it needs.

    FSDP: full sharding with one unit per LLaDABlock (other models are a single unit), with
    train.activation_checkpointing those blocks recomputed in the backward pass, bf16 mixed precision
    from train.precision, and sharded training states (the safetensors weights are still gathered
    whole). It needs CUDA.
    """
    if cfg.strategy != "fsdp":
        return cfg.strategy
    if cfg.accelerator == "cpu" or not torch.cuda.is_available():
        raise ConfigError("train.strategy=fsdp needs CUDA devices; on the CPU use train.strategy=ddp or ddp_spawn")
    from lightning.pytorch.strategies import FSDPStrategy

    blocks = {LLaDABlock}
    return FSDPStrategy(
        sharding_strategy="FULL_SHARD",
        auto_wrap_policy=blocks,
        activation_checkpointing_policy=blocks if cfg.activation_checkpointing else None,
        state_dict_type="sharded",  # training states: every rank writes its shards (resume.py)
    )


def compile_blocks(model: nn.Module) -> int:
    """torch.compile every LLaDABlock in place (parameter names unchanged), or the whole model if it has
    none; returns the number of blocks compiled."""
    blocks = [m for m in model.modules() if isinstance(m, LLaDABlock)]
    for block in blocks:
        block.compile()
    if not blocks:
        model.compile()
    return len(blocks)


def train(config: ExperimentConfig, callbacks: Sequence[Any] = ()) -> Run:
    """Train the experiment; returns the run (model trained, checkpoint written).

    `callbacks` are extra Lightning callbacks. Under ddp_spawn everything handed to the trainer is
    pickled into the worker processes, hence partials of module-level functions below, never lambdas.
    In a multi-process run every process returns; `Run.rank` says which one it is.
    """
    import lightning as L

    from multimodal.train.callbacks import MetricsJsonl, PeriodicValidation, SafetensorsCheckpoint, StepProgressBar
    from multimodal.train.evaluate import evaluate
    from multimodal.train.module import DiffusionModule
    from multimodal.train.observe import TrainingMonitor, build_loggers
    from multimodal.train.posttrain import is_posttraining, posttrain_loader, posttrain_module

    cfg = config.train
    check_experiment(config)  # a config built in Python was not checked at resolution
    strategy = _strategy(cfg)
    set_threads(cfg.threads)
    shards = _stream_shards(config)
    # the data order and the masking noise have their own seeds; this seeds whatever else draws numbers
    L.seed_everything(config.seed, workers=True, verbose=False)
    run = build_run(config)
    run.folder = claim_folder(run.folder, cfg.resume)
    common = {"diffusion": config.diffusion, "train": cfg, "mask_id": run.tokenizer.mask_id, "seed": config.seed}
    common.update(eos_id=run.tokenizer.eos_id, pad_id=run.tokenizer.pad_id)
    # a post-training stage copies its frozen reference from the starting model, before caches and compilation
    module = posttrain_module(run, **common) if is_posttraining(run) else DiffusionModule(run.model, **common)
    if cfg.cache_features:
        install_feature_caches(run.model)
        reference = getattr(getattr(module, "reference", None), "model", None)  # a post-training stage's copy
        if reference is not None:
            install_feature_caches(reference)
    if cfg.compile:
        compile_blocks(run.model)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    interrupt = StopOnInterrupt()  # Ctrl-C: stop at the next step boundary, the final state saved
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=1 if shards and cfg.sample_budget else -1,  # a budgeted stream ends once; both stream endlessly
        accelerator=cfg.accelerator,
        strategy=strategy,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        precision=precision,
        gradient_clip_val=cfg.grad_clip or None,
        logger=build_loggers(cfg.loggers, run.folder) or False,
        enable_checkpointing=False,
        use_distributed_sampler=False,  # ResumableBatchSampler splits the stream between ranks itself
        plugins=[StateCheckpointIO()],
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every,
        default_root_dir=str(run.folder),
        callbacks=[
            StepProgressBar(),
            TrainingMonitor(cfg.log_every),  # before MetricsJsonl, which writes what it logs
            PeriodicValidation(
                functools.partial(evaluate, run, "validation", cfg.val_limit, write=False), cfg.eval_every
            ),
            MetricsJsonl(run.folder / "metrics.jsonl", cfg.log_every),
            SafetensorsCheckpoint(functools.partial(save_run_checkpoint, run), cfg.checkpoint_every),
            TrainingState(run.folder / "checkpoints", cfg.checkpoint_every),
            interrupt,
            *callbacks,
        ],
    )
    state = latest_state(run.folder, check=True) if cfg.resume else None
    if state is not None:
        position = read_position(state)
        read_with = (position.get("batch_size"), position.get("world_size"))
        if shards is not None and read_with != (cfg.batch_size, trainer.world_size):
            raise ConfigError(
                f"train.resume: {state} read the stream with batch_size {read_with[0]} on {read_with[1]} "
                f"processes, this run uses {cfg.batch_size} on {trainer.world_size}; a streamed run resumes "
                "exactly only with the same batch size and number of processes"
            )
        module.stream_start = (position["global_step"], position["samples"])
        log.info("resuming %s from %s (step %d)", config.name, state, module.stream_start[0])
    elif cfg.resume:
        log.info("no training state in %s: starting from step 0", run.folder / "checkpoints")
    if is_posttraining(run):
        loader, examples = posttrain_loader(run, *module.stream_start, trainer.world_size)
    else:
        loader, examples = _train_loader(run, shards, *module.stream_start)
    if trainer.is_global_zero:  # the rank comes from torchrun's / SLURM's environment before fit
        run.folder.mkdir(parents=True, exist_ok=True)
        dump(config, run.folder / CONFIG)
        _keep_metrics_until(run.folder / "metrics.jsonl", module.stream_start[0])
    total = sum(p.numel() for p in run.model.parameters())
    data = examples if isinstance(examples, str) else f"{examples} training examples"
    log.info("training %s: %.2fM parameters, %s", config.name, total / 1e6, data)
    trainer.fit(module, loader, ckpt_path=state, weights_only=True)
    if cfg.cache_features:
        remove_feature_caches(run.model)
    if cfg.strategy == "fsdp" and trainer.is_global_zero:  # run.model is sharded in place: read the weights back
        folder, run = run.folder, build_run(replace(config, init_from=None), run.tokenizer)
        run.folder = folder
        load_weights(run.folder / "checkpoints" / "last", run.model)
    run.rank = trainer.global_rank
    run.stopped_at = interrupt.stopped_at
    return run


OUTPUTS = ("metrics.jsonl", "checkpoints", "eval", "samples")  # what a run writes into its folder


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to `requested`, else to the CPUs this process may run on (its affinity
    mask, which a container's or a job scheduler's cpuset narrows; torch's own default counts every core of
    the machine), and log the number."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = requested or available
    torch.set_num_threads(threads)
    spin = os.environ.get("GOMP_SPINCOUNT") or os.environ.get("OMP_WAIT_POLICY") or "libgomp's default"
    log.info(
        "training with %d CPU threads (%d CPUs available to this process; OpenMP spin: %s)", threads, available, spin
    )
    return threads


def claim_folder(folder: Path, resume: bool) -> Path:
    """The folder a training run writes: `folder` when it holds no run's outputs yet or the run resumes
    (train.resume), else the first of folder-2, folder-3, ... that holds none, so a second run never
    replaces the first one's metrics, checkpoints or evaluations. Every process of a multi-process run
    reaches the same answer: rank 0 writes outputs only once training has started, after every rank
    has chosen."""
    if resume:
        return folder
    candidate, n = folder, 1
    while any((candidate / name).exists() for name in OUTPUTS):
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    if candidate != folder:
        log.warning(
            "%s holds an earlier run; this one writes %s (train.resume=true continues the earlier one)",
            folder,
            candidate,
        )
    return candidate


def _stream_shards(config: ExperimentConfig) -> list[str] | None:
    """The task's training shards when train.streaming is on (None: train on the materialised split)."""
    cfg = config.train
    if not cfg.streaming:
        return None
    shards = create_task(config.task).train_shards()
    if not shards:
        raise ConfigError(f"train.streaming: task '{config.task.name}' has no WebDataset shards for its training split")
    return shards


def _train_loader(run: Run, shards: list[str] | None, step: int, samples: int) -> tuple[Any, Any]:
    """The training DataLoader, entering the data at (global step, samples consumed), and a count of
    its examples for the log.

    Materialised split: ResumableBatchSampler over task.train_layouts() starts at `samples`. Streaming
    (streaming.py): the shards are read as they come and each rank skips the `step` batches it has
    consumed (one batch per optimiser step).
    """
    cfg = run.config.train
    modalities = cached_modalities(run.modalities) if cfg.cache_media else run.modalities
    collate = functools.partial(run.task.collate, tokenizer=run.tokenizer, modalities=modalities)
    if cfg.pack_length:
        collate = PackedCollate(collate, cfg.pack_length, run.tokenizer.pad_id)
    workers = {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0}
    if shards is not None:
        from multimodal.train.streaming import StreamingDataset, streaming_loader

        dataset = StreamingDataset(
            shards,
            run.task.layouts_from_sample,
            batch_size=cfg.batch_size,
            seed=run.config.seed,
            shuffle_buffer=cfg.shuffle_buffer,
            sample_budget=cfg.sample_budget,
            start_batch=step,
            errors=getattr(run.config.task, "bad_records", "skip"),
        )  # rank and world size are read from torch.distributed when iteration starts
        return streaming_loader(dataset, collate_fn=collate, **workers), f"streamed from {len(shards)} shards"
    layouts = run.task.train_layouts()
    sampler = ResumableBatchSampler(
        len(layouts),
        cfg.batch_size,
        run.config.seed,
        start=samples,
        lengths=_lengths(run, layouts, modalities) if cfg.bucket_batches else None,
        bucket_batches=cfg.bucket_batches,
    )
    return torch.utils.data.DataLoader(layouts, batch_sampler=sampler, collate_fn=collate, **workers), len(layouts)


def _lengths(run: Run, layouts: Sequence[Any], modalities: dict[str, ModalityIO]) -> list[int]:
    """Tokens each training example becomes (text tokens plus the embeddings of its media items), for
    length bucketing; media are preprocessed once here to count them (and kept, with train.cache_media)."""
    lengths = []
    for lay in layouts:
        n = sum(len(run.tokenizer.encode(p)) + len(run.tokenizer.encode(a)) + 1 for p, a in lay.history)
        n += len(run.tokenizer.encode(lay.prompt + lay.prompt_suffix)) + len(run.tokenizer.encode(lay.answer)) + 1
        for name, io in modalities.items():
            try:
                n += sum(int(io.num_tokens(io.preprocess(item))) - 1 for item in lay.media.get(name, []))
            except ValueError as err:  # bad media: one error naming the example, before the first step
                raise ValueError(f"training example {lay.meta.get('id', '?')} ({name}): {err}") from None
        lengths.append(n)
    return lengths


def _keep_metrics_until(path: Path, step: int) -> None:
    """A fresh run (step 0) starts metrics.jsonl anew; a resumed one keeps the lines up to its step
    (later lines came from the interrupted run after its last training state)."""
    if step == 0 or not path.is_file():
        path.unlink(missing_ok=True)
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
