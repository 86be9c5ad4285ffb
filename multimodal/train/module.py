"""A thin LightningModule around the diffusion objective: one loss call per step, logging, optimiser.

Masking randomness comes from a generator seeded by (seed, global step, rank), so a step's
corruption does not depend on what ran before it. The logged ``loss`` is the mean over all ranks
(the loss of the global batch); a non-finite one stops the run or skips the batch (train.on_nonfinite),
decided on every rank alike so that data-parallel ranks never diverge.

Training states (resume.py) carry, besides what Lightning stores, the position in the training
stream (samples consumed, sampler.py), the RNG states and the count of skipped batches.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch import nn

from multimodal.diffusion.objective import DiffusionConfig, block_size_at, diffusion_loss
from multimodal.train.build import part_of
from multimodal.train.config import TrainConfig
from multimodal.train.optim import build_optimizer, matrix_names
from multimodal.train.resume import rng_states, set_rng_states
from multimodal.types import MultimodalBatch

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (train.on_nonfinite=stop).

    `step` counts like metrics.jsonl (the first optimiser step is 1); `checkpoint` is the last one
    written before it, filled in by SafetensorsCheckpoint.
    """

    def __init__(self, loss: float, step: int, checkpoint: Path | None = None) -> None:
        super().__init__(loss, step)
        self.loss, self.step, self.checkpoint = loss, step, checkpoint

    def __str__(self) -> str:
        return f"loss is {self.loss} at step {self.step}; the last good checkpoint is {self.checkpoint or 'none'}"


def mask_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the masking generator for optimiser step `step` (0-based) on global rank `rank`."""
    return seed * 1_000_003 + step * 7919 + rank


class DiffusionModule(L.LightningModule):
    """Trains `model` (a backbone or multimodal model) with the masked-diffusion loss."""

    def __init__(
        self,
        model: nn.Module,
        diffusion: DiffusionConfig,
        train: TrainConfig,
        mask_id: int,
        seed: int = 0,
        eos_id: int | None = None,
        pad_id: int = 0,
    ):
        super().__init__()
        self.model = model
        self.diffusion = diffusion
        self.train_cfg = train
        self.mask_id, self.eos_id, self.pad_id = mask_id, eos_id, pad_id
        self.seed = seed
        self.schedule = diffusion.build_schedule()
        self.nonfinite_skipped = 0
        self._skip_update = False
        self.matrices = matrix_names(model)  # before any sharding (optim.matrix_names)
        self.num_masked: int | None = None  # masked tokens of the last training batch (TrainingMonitor's FLOPs)
        self.trained_batch: MultimodalBatch | None = (
            None  # post-training: the rows the step trained on, if not the batch
        )
        self.stream_start = (0, 0)  # (global step, samples consumed) where this run entered the stream

    def samples_consumed(self) -> int:
        """Samples of the training stream read so far, all ranks together (one batch per rank and step)."""
        step, samples = self.stream_start
        return samples + (self.global_step - step) * self.train_cfg.batch_size * self.trainer.world_size

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data_position"] = {
            "samples": self.samples_consumed(),
            "step": self.global_step,
            "batch_size": self.train_cfg.batch_size,
            "world_size": self.trainer.world_size,
        }
        checkpoint["rng"] = rng_states()
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        set_rng_states(checkpoint["rng"])
        self.nonfinite_skipped = checkpoint.get("nonfinite_skipped", 0)

    def setup(self, stage: str) -> None:
        if self.train_cfg.threads:  # again here: processes that ddp_spawn starts begin with torch's default
            torch.set_num_threads(self.train_cfg.threads)

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(mask_seed(self.seed, self.global_step, self.global_rank))
        return g

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
        diffusion = self.diffusion
        if diffusion.block_schedule:  # LLaDA2's block-size warm-up / decay
            diffusion = replace(diffusion, block_size=block_size_at(diffusion.block_schedule, self.global_step))
        out = diffusion_loss(
            self.model,
            batch,
            diffusion,
            self.schedule,
            self.mask_id,
            self._generator(),
            eos_id=self.eos_id,
            pad_id=self.pad_id,
        )
        self.num_masked = out.num_masked
        size = batch.input_ids.shape[0]
        # one all-reduce: the global-batch loss to log, and non-finite on any rank means non-finite on all
        loss = self.trainer.strategy.reduce(out.loss.detach().clone(), reduce_op="mean")
        if not torch.isfinite(loss):
            return self._nonfinite(float(loss))
        self.log("loss", loss, prog_bar=True, batch_size=size)
        self.log("masked_ce", out.mean_ce, batch_size=size)
        if out.accuracy is not None:
            self.log("masked_acc", out.accuracy, batch_size=size)
        if out.ctc is not None:
            self.log("ctc", out.ctc, prog_bar=True, batch_size=size)
        if out.aux is not None:
            self.log("router_loss", out.aux, batch_size=size)
        return out.loss

    def _nonfinite(self, loss: float) -> torch.Tensor:
        """Stop (raise NonFiniteLoss) or skip the batch.

        Skipping returns a zero loss that reaches every trainable weight (Lightning refuses None under DDP,
        and DDP's gradient all-reduce must run on every rank); on_before_optimizer_step then drops the
        gradients, so AdamW leaves weights and moments alone.
        """
        step = self.global_step + 1
        if self.train_cfg.on_nonfinite == "stop":
            raise NonFiniteLoss(loss, step)
        self.nonfinite_skipped += 1
        self._skip_update = True
        log.warning("loss is %s at step %d: batch skipped (%d so far)", loss, step, self.nonfinite_skipped)
        self.log("nonfinite_skipped", float(self.nonfinite_skipped), batch_size=1)
        return sum((p.sum() * 0 for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device))

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._skip_update:
            optimizer.zero_grad(set_to_none=True)
            self._skip_update = False

    def configure_optimizers(self):
        cfg = self.train_cfg
        optimizer, scheduler = build_optimizer(self.model, cfg, cfg.max_steps, cfg.part_lr, part_of, self.matrices)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def transfer_batch_to_device(self, batch: MultimodalBatch, device: torch.device, dataloader_idx: int):
        return batch.to(device)
