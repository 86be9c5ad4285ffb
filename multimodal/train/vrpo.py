"""The VRPO training stage (LLaDA 1.5): DPO on ELBO estimates against a frozen reference.

Each step reads a batch of preference pairs (preferences.py), lays the chosen and the rejected answers
out as one SFT batch (rows 0..P-1 chosen, P..2P-1 rejected, media riding along), draws the masked
copies of every response once (multimodal/diffusion/preference.py), scores them with the policy (with
gradients) and, on the same copies when `vrpo.antithetic`, with the reference (without), and minimises
-log sigmoid of the preference score. The masking noise comes from a CPU generator seeded by (seed,
step, rank), as the SFT objective's, so a resumed run repeats it exactly.

Logged: ``loss``, ``pref_accuracy`` (pairs whose score is positive), ``margin`` (the mean score / beta:
the implicit reward gap) and ``chosen_reward`` / ``rejected_reward`` (beta x (B_theta - B_ref)).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from multimodal.diffusion.preference import copies_elbo, dpo_loss, draw_copies, preference_score
from multimodal.lora import adapters_disabled
from multimodal.train.module import DiffusionModule, mask_seed
from multimodal.train.posttrain_config import VRPOConfig
from multimodal.train.preferences import PreferencePair
from multimodal.types import MultimodalBatch


class FrozenReference:
    """The reference policy: a frozen model kept outside the LightningModule (so it is neither trained,
    wrapped by DDP nor saved), or None with `lora_base`: the policy itself with its adapters off."""

    def __init__(self, model: nn.Module | None) -> None:
        self.model = model
        if model is not None:
            model.eval().requires_grad_(False)

    def to(self, device: torch.device) -> FrozenReference:
        if self.model is not None:
            self.model.to(device)
        return self

    def __call__(self, policy: nn.Module, fn: Any) -> Any:
        """fn(model) without gradients, on the reference."""
        with torch.no_grad():
            if self.model is not None:
                return fn(self.model)
            with adapters_disabled(policy):
                return fn(policy)


def collate_pairs(pairs: list[PreferencePair], task: Any, tokenizer: Any, modalities: Any) -> MultimodalBatch:
    """Chosen rows first, then the rejected ones, in one SFT batch (one width, so one canvas)."""
    return task.collate([p.chosen for p in pairs] + [p.rejected for p in pairs], tokenizer, modalities)


class VRPOModule(DiffusionModule):
    """Trains the policy `model` with VRPO against `reference`."""

    def __init__(self, model: nn.Module, reference: FrozenReference, vrpo: VRPOConfig, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.vrpo = vrpo
        self.reference = reference

    def on_fit_start(self) -> None:
        self.reference.to(self.device)

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
        cfg = self.vrpo
        generator = torch.Generator().manual_seed(mask_seed(self.seed, self.global_step, self.global_rank))
        draw = functools.partial(
            draw_copies,
            batch,
            self.mask_id,
            timesteps=cfg.timesteps,
            masks_per_timestep=cfg.masks_per_timestep,
            estimator=cfg.estimator,
            schedule=self.schedule,
            generator=generator,
        )
        copies = draw()
        policy = copies_elbo(self.model, batch, copies, self.diffusion.chunk_size)
        ref_copies = copies if cfg.antithetic else draw()  # the generator has moved on: independent copies
        reference = self.reference(self.model, lambda m: copies_elbo(m, batch, ref_copies, self.diffusion.chunk_size))
        pairs = batch.input_ids.shape[0] // 2
        scores = preference_score(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], cfg.beta)
        loss_value = dpo_loss(scores)
        self.num_masked = int(copies.masked.sum())  # the policy's trained rows (the reference's forward is not counted)
        attention = None if batch.attention_mask is None else batch.attention_mask.repeat_interleave(copies.copies, 0)
        self.trained_batch = MultimodalBatch(copies.input_ids, copies.masked, attention_mask=attention)
        loss = self.trainer.strategy.reduce(loss_value.detach().clone(), reduce_op="mean")
        if not torch.isfinite(loss):
            return self._nonfinite(float(loss))
        with torch.no_grad():
            s = scores.score.detach()
            self.log("loss", loss, prog_bar=True, batch_size=pairs)
            self.log("pref_accuracy", (s > 0).float().mean(), prog_bar=True, batch_size=pairs)
            self.log("margin", s.mean() / cfg.beta, batch_size=pairs)
            self.log(
                "chosen_reward", (cfg.beta * (scores.policy_chosen - scores.reference_chosen)).mean(), batch_size=pairs
            )
            self.log(
                "rejected_reward",
                (cfg.beta * (scores.policy_rejected - scores.reference_rejected)).mean(),
                batch_size=pairs,
            )
        return loss_value
