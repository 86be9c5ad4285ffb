"""A thin LightningModule around the diffusion objective: one loss call per step, logging, optimiser.

Masking randomness comes from a generator seeded by (seed, global step, rank), so a step's
corruption does not depend on what ran before it.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
from multimodal.train.build import part_of
from multimodal.train.config import TrainConfig
from multimodal.train.optim import build_optimizer
from multimodal.types import MultimodalBatch


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

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1_000_003 + self.global_step * 7919 + self.global_rank)
        return g

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
        out = diffusion_loss(
            self.model,
            batch,
            self.diffusion,
            self.schedule,
            self.mask_id,
            self._generator(),
            eos_id=self.eos_id,
            pad_id=self.pad_id,
        )
        size = batch.input_ids.shape[0]
        self.log("loss", out.loss.detach(), prog_bar=True, batch_size=size)
        self.log("masked_ce", out.mean_ce, batch_size=size)
        if out.accuracy is not None:
            self.log("masked_acc", out.accuracy, batch_size=size)
        if out.ctc is not None:
            self.log("ctc", out.ctc, prog_bar=True, batch_size=size)
        return out.loss

    def configure_optimizers(self):
        cfg = self.train_cfg
        optimizer, scheduler = build_optimizer(
            self.model,
            cfg.lr,
            cfg.weight_decay,
            cfg.betas,
            cfg.max_steps,
            cfg.warmup_steps,
            cfg.min_lr_ratio,
            cfg.part_lr,
            part_of,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def transfer_batch_to_device(self, batch: MultimodalBatch, device: torch.device, dataloader_idx: int):
        return batch.to(device)
