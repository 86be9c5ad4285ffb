"""Runs: build everything an experiment config names, train it, and load it back.

A run folder (train.output_dir / name) holds ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/step_XXXXXXX/`` and ``checkpoints/last/`` (safetensors + config + tokenizer, see
multimodal.checkpoint) and ``eval/<split>_{predictions.jsonl,metrics.json}`` (evaluate.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.checkpoint import CONFIG, load_weights, save_checkpoint
from multimodal.config import dump
from multimodal.sampling import SpecialIds
from multimodal.tokenizer import BuiltinTokenizer, HFTokenizer, build_tokenizer, load_tokenizer
from multimodal.train.build import build_model, checkpoint_folder, modality_io
from multimodal.train.config import ExperimentConfig, experiment_from_text
from multimodal.types import ModalityIO
from tasks import Task, create_task

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A built or loaded experiment: config, task, tokenizer, model and its folder."""

    config: ExperimentConfig
    task: Task
    tokenizer: BuiltinTokenizer | HFTokenizer
    model: nn.Module
    folder: Path

    @property
    def special(self) -> SpecialIds:
        return SpecialIds(self.tokenizer.mask_id, self.tokenizer.eos_id, getattr(self.tokenizer, "eot_id", None))

    @property
    def modalities(self) -> dict[str, ModalityIO]:
        return modality_io(self.model)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def build_run(config: ExperimentConfig, tokenizer: BuiltinTokenizer | HFTokenizer | None = None) -> Run:
    """Create the task, the tokenizer (built from the task's training texts plus the modality
    placeholders) and the model."""
    task = create_task(config.task)
    placeholders = [m.placeholder for m in config.modalities.values()]
    tokenizer = tokenizer or build_tokenizer(config.tokenizer, task.texts(), specials=placeholders)
    if config.dsm is None and len(tokenizer) > config.backbone.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but backbone.vocab_size is "
            f"{config.backbone.vocab_size}; set backbone.vocab_size >= {len(tokenizer)}"
        )
    placeholder_ids = {name: tokenizer.token_id(m.placeholder) for name, m in config.modalities.items()}
    model = build_model(config, placeholder_ids)
    folder = Path(config.train.output_dir) / config.name
    return Run(config, task, tokenizer, model, folder)


def _tokenizer_writer(tokenizer: BuiltinTokenizer | HFTokenizer) -> dict[str, Any]:
    if not isinstance(tokenizer, HFTokenizer):  # built-in and ESM tokenizers are one JSON file
        return {"tokenizer.json": tokenizer.save}
    return {"tokenizer": lambda p: (p.mkdir(), tokenizer.save(p))}


def save_run_checkpoint(run: Run, step: int) -> Path:
    text = dump(run.config)
    writers = _tokenizer_writer(run.tokenizer)
    folder = run.folder / "checkpoints"
    save_checkpoint(folder / f"step_{step:07d}", run.model, text, writers)
    return save_checkpoint(folder / "last", run.model, text, writers)


def train(config: ExperimentConfig) -> Run:
    """Train the experiment; returns the run (model trained, checkpoint written)."""
    import lightning as L

    from multimodal.train.callbacks import MetricsJsonl, PeriodicValidation, SafetensorsCheckpoint, Throughput
    from multimodal.train.evaluate import evaluate
    from multimodal.train.module import DiffusionModule

    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = build_run(config)
    run.folder.mkdir(parents=True, exist_ok=True)
    dump(config, run.folder / CONFIG)
    (run.folder / "metrics.jsonl").unlink(missing_ok=True)
    layouts = run.task.train_layouts()
    modalities = run.modalities
    loader = torch.utils.data.DataLoader(
        layouts,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(layouts) >= cfg.batch_size,
        collate_fn=lambda items: run.task.collate(items, run.tokenizer, modalities),
        generator=torch.Generator().manual_seed(config.seed),
    )
    module = DiffusionModule(
        run.model,
        config.diffusion,
        cfg,
        run.tokenizer.mask_id,
        config.seed,
        eos_id=run.tokenizer.eos_id,
        pad_id=run.tokenizer.pad_id,
    )
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=1,
        precision=precision,
        gradient_clip_val=cfg.grad_clip or None,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every,
        default_root_dir=str(run.folder),
        callbacks=[
            Throughput(),
            PeriodicValidation(lambda: evaluate(run, "validation", cfg.val_limit, write=False), cfg.eval_every),
            MetricsJsonl(run.folder / "metrics.jsonl", cfg.log_every),
            SafetensorsCheckpoint(lambda step: save_run_checkpoint(run, step), cfg.checkpoint_every),
        ],
    )
    total = sum(p.numel() for p in run.model.parameters())
    log.info("training %s: %.2fM parameters, %d training examples", config.name, total / 1e6, len(layouts))
    trainer.fit(module, loader)
    return run


def load_run(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Run:
    """Load a run or checkpoint folder: config (with --set overrides), tokenizer and weights."""
    folder = checkpoint_folder(Path(path))
    config = experiment_from_text((folder / CONFIG).read_text(), overrides)
    tok_file = folder / "tokenizer.json"
    tokenizer = load_tokenizer(tok_file if tok_file.is_file() else folder / "tokenizer")
    config = replace(config, init_from=None)
    run = build_run(config, tokenizer)
    load_weights(folder, run.model)
    # the run folder for its last checkpoint; an intermediate checkpoint keeps its evaluations to itself
    run.folder = folder.parent.parent if folder.name == "last" and folder.parent.name == "checkpoints" else folder
    return run
