"""Lightning callbacks: metrics as JSON lines, periodic validation, safetensors checkpoints, a progress
bar in steps (throughput, MFU and memory: observe.py).

In a multi-process run only global rank 0 writes files and validates; the others keep in step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

from multimodal.train.module import NonFiniteLoss


class MetricsJsonl(L.Callback):
    """Appends the logged metrics to `path` as one JSON object per line every `every` steps.

    Validation numbers (val/*) appear only on the line of the step that computed them (a line is written
    at that step even between logging steps), so the learning curve reads straight from the file;
    PeriodicValidation must come before this callback.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = Path(path), max(1, every)
        self._t0 = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        fresh_validation = float(trainer.callback_metrics.get("val/step", -1)) == step
        # a validation step gets its line even between logging steps: the learning curve keeps every point
        if (step % self.every and step != trainer.max_steps and not fresh_validation) or not trainer.is_global_zero:
            return
        row = {"step": step, "time_s": round(time.perf_counter() - self._t0, 3)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/") and not fresh_validation:
                continue  # Lightning keeps the last logged value; a validation belongs to its own step only
            row[key] = float(value) if isinstance(value, torch.Tensor) else value
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class PeriodicValidation(L.Callback):
    """Every `every` steps, calls `score()` (decode some validation examples) and logs its numbers as val/<name>."""

    def __init__(self, score: Callable[[], dict], every: int) -> None:
        self.score, self.every = score, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every <= 0 or step % self.every or not trainer.is_global_zero:
            return
        was_training = pl_module.training
        metrics = self.score()
        pl_module.train(was_training)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith("n/"):
                pl_module.log(f"val/{key}", float(value), batch_size=1)
        pl_module.log("val/step", float(step), batch_size=1)  # MetricsJsonl (after us) writes val/* on this step only


class SafetensorsCheckpoint(L.Callback):
    """Calls `save(step, state)` on rank 0 every `every` steps (if > 0) and at the end of training.

    `state` is None (save the model as it is) except under FSDP, where every rank first takes part in
    gathering the full weights (the LightningModule's state dict, on rank 0). The end-of-training save
    does not happen when training raised (Lightning skips on_train_end), so a run stopped by
    NonFiniteLoss keeps its last good checkpoint, whose path the exception names.
    """

    def __init__(self, save: Callable[[int, dict | None], Path], every: int) -> None:
        self.save, self.every = save, every
        self.last: Path | None = None

    def _save(self, trainer: L.Trainer, step: int) -> None:
        state = None
        if isinstance(trainer.strategy, FSDPStrategy):  # collective: every rank must take part
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            # whole weights on rank 0, whatever state_dict_type the training states use
            full = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
            with FSDP.state_dict_type(trainer.strategy.model, StateDictType.FULL_STATE_DICT, full):
                state = trainer.lightning_module.state_dict()
        if trainer.is_global_zero:
            self.last = self.save(step, state)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every > 0 and step % self.every == 0 and step < trainer.max_steps:
            self._save(trainer, step)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, trainer.global_step)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLoss):
            exception.checkpoint = self.last


_BAR = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar


class StepProgressBar(_BAR):
    """Lightning's progress bar counting the run's optimiser steps ("training 120/1500") instead of the
    epochs of an endless data stream (which it shows as ``Epoch 0/-2``); rich when installed, else tqdm.
    A class at module level: ddp_spawn pickles the callbacks into its processes. The bar goes to stderr,
    with the logs, so what the CLI prints on stdout (the metrics) stays readable by programs."""

    def __init__(self) -> None:
        if _BAR is RichProgressBar:
            super().__init__(console_kwargs={"stderr": True})
        else:
            super().__init__()  # tqdm writes to stderr already

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self.trainer.max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:  # rich
        return "training"

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if _BAR is TQDMProgressBar:
            self.train_progress_bar.set_description("training")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # count steps, so a resumed run's bar starts where the run stands
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)
