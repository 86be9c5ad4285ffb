"""The diffu-GRPO training stage (d1): rollouts through the Engine, rewards, mu inner updates.

One optimiser step per training step, as TRL's GRPO trainer (on which d1 builds) counts them: every
`inner_updates` (mu) steps the module rolls out a batch of prompts (train.batch_size prompts x
group_size completions, the Engine's batched generation with the rollout sampler: any policy and
cache, float64 Gumbel noise), scores the completions with the rewards, computes group-relative
advantages and, for each of the mu inner iterations, a fresh prompt-masked view with the old policy's
and the reference's log-probabilities on it (no gradients). Steps k = 0..mu-1 of the batch then each
take one update on view k (multimodal/diffusion/grpo.py). With mu = 1 the old policy is the current
one (ratio 1, the loss is the plain policy gradient plus KL); d1's release crashes there.

The loader yields each prompt batch mu times (`RepeatedBatches`), so step s reads prompt batch s // mu
and a run resumes at any step: the buffered rollouts go into the training state and come back with it.
Randomness: rollouts from (seed, rollout, rank), prompt masks likewise, drawn on the model's device.

Logged: ``loss``, ``reward`` (mean), ``reward_std`` (mean within-group std: 0 means no learning
signal), ``kl``, ``clipped`` (share of tokens whose ratio was clipped), ``completion_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler

from multimodal.diffusion.grpo import (
    completion_logprobs,
    completion_mask,
    group_advantages,
    grpo_loss,
    prompt_masked_view,
)
from multimodal.sampling.base import SamplerConfig
from multimodal.sampling.engine import Engine
from multimodal.sampling.generate import left_pad
from multimodal.train.module import DiffusionModule, mask_seed
from multimodal.train.posttrain_config import GRPOConfig
from multimodal.train.vrpo import FrozenReference
from multimodal.types import MediaItems, MultimodalBatch, PromptBatch
from tasks.base import Layout


@dataclass(frozen=True)
class PromptSet:
    """What the GRPO loader yields: the layouts (for the rewards) and their prompts laid out."""

    layouts: list[Layout]
    prompts: PromptBatch


class RepeatedBatches(Sampler[list[int]]):
    """Each batch of `batches` yielded `times` times in a row, the first one `times - skip` times (resume)."""

    def __init__(self, batches: Sampler[list[int]], times: int, skip: int = 0) -> None:
        self.batches, self.times, self.skip = batches, times, skip

    def __iter__(self) -> Iterator[list[int]]:
        skip = self.skip
        for batch in self.batches:
            for _ in range(self.times - skip):
                yield batch
            skip = 0


@dataclass
class Rollouts:
    """One batch of rollouts and what its mu inner updates need (N = prompts x group, C = completion).

    Attributes:
        sequences: (N, L) prompt (left-padded) + completion canvas.
        attention_mask, position_ids: (N, L) as generation saw them.
        start: first completion column (C = L - start).
        mask: (N, C) bool, completion tokens up to and including the first EOS.
        advantages, rewards: (N,).
        views: (mu, N, L) the prompt-masked input of each inner iteration.
        old_logp: (mu, N, C), or an empty tensor when mu = 1 (the current policy is the old one).
        ref_logp: (mu, N, C), or an empty tensor when beta = 0.
        media_inputs, media_masks: the prompts' raw media, repeated per completion.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    start: int
    mask: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor
    views: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    media_inputs: dict[str, torch.Tensor]
    media_masks: dict[str, torch.Tensor]

    def to(self, device: torch.device | str) -> Rollouts:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif isinstance(value, dict):
                value = {k: v.to(device) for k, v in value.items()}
            moved[f.name] = value
        return Rollouts(**moved)

    @property
    def media(self) -> MediaItems | None:
        return MediaItems(self.media_inputs, self.media_masks) if self.media_inputs else None


class GRPOModule(DiffusionModule):
    """Trains the policy `model` with diffu-GRPO."""

    def __init__(
        self,
        model: nn.Module,
        reference: FrozenReference,
        grpo: GRPOConfig,
        rollout_sampler: SamplerConfig,
        tokenizer: Any,
        reward: Callable[[str, str, Layout], float],
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.grpo, self.rollout_sampler = grpo, rollout_sampler
        self.tokenizer, self.reward = tokenizer, reward
        self.reference = reference
        self.rollouts: Rollouts | None = None

    def on_fit_start(self) -> None:
        self.reference.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.rollouts is not None:  # a run resumed between inner updates continues on the same rollouts
            checkpoint["grpo_rollouts"] = asdict(self.rollouts.to("cpu"))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("grpo_rollouts")
        self.rollouts = None if saved is None else Rollouts(**saved)

    def transfer_batch_to_device(self, batch: PromptSet, device: torch.device, dataloader_idx: int) -> PromptSet:
        return batch  # rollouts move what they need

    def _stop_ids(self) -> set[int]:
        return {i for i in (self.tokenizer.eos_id, getattr(self.tokenizer, "eot_id", None)) if i is not None}

    @torch.no_grad()
    def rollout(self, batch: PromptSet, index: int) -> Rollouts:
        """Roll out, score and prepare the inner iterations of prompt batch number `index` (module docstring)."""
        cfg, group = self.grpo, self.grpo.group_size
        prompts = [p for p in batch.prompts.prompts for _ in range(group)]
        inputs = {k: v.repeat_interleave(group, 0) for k, v in batch.prompts.modality_inputs.items()}
        masks = {k: v.repeat_interleave(group, 0) for k, v in batch.prompts.modality_masks.items()}
        engine = Engine(self.model, self.tokenizer, self.rollout_sampler, seed=self.seed)
        seed = mask_seed(self.seed + 1, index, self.global_rank)
        out = engine.generate(PromptBatch(prompts, inputs, masks), generator=engine.generator(seed))
        self.model.train()  # the Engine put it in eval mode
        layouts = [lay for lay in batch.layouts for _ in range(group)]
        texts = engine.texts(out)
        rewards = torch.tensor([self.reward(lay.prompt, t, lay) for lay, t in zip(layouts, texts, strict=True)])
        seqs, device = out.sequences, out.sequences.device
        start = seqs.shape[1] - out.generated.shape[1]
        _, prompt_attention = left_pad(prompts, self.tokenizer.pad_id, device)
        attention = torch.cat([prompt_attention, torch.ones_like(out.generated)], 1)
        placeholders = torch.tensor([io.placeholder_id for io in engine.modalities.values()], device=device)
        prompt_maskable = attention.bool() & ~torch.isin(seqs, placeholders)  # real prompt tokens, no media
        prompt_maskable[:, start:] = False
        g = torch.Generator(device=device).manual_seed(mask_seed(self.seed + 2, index, self.global_rank))
        span = (start, seqs.shape[1])
        rate = cfg.prompt_mask_rate
        views = [
            prompt_masked_view(seqs, prompt_maskable, span, self.mask_id, rate, g) for _ in range(cfg.inner_updates)
        ]
        rollouts = Rollouts(
            sequences=seqs,
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp_min(0),
            start=start,
            mask=completion_mask(out.generated, self._stop_ids()),
            advantages=group_advantages(rewards, group, cfg.scale_rewards).to(device),
            rewards=rewards,
            views=torch.stack(views),
            old_logp=torch.empty(0),
            ref_logp=torch.empty(0),
            media_inputs={k: v.to(device) for k, v in inputs.items()},
            media_masks={k: v.to(device) for k, v in masks.items()},
        )
        inner = range(cfg.inner_updates)
        if cfg.inner_updates > 1:
            rollouts.old_logp = torch.stack([self._logp(self.model, rollouts, k) for k in inner])
        if cfg.beta:
            rollouts.ref_logp = torch.stack(
                [self.reference(self.model, lambda m, k=k: self._logp(m, rollouts, k)) for k in inner]
            )
        return rollouts

    def _logp(self, model: nn.Module, r: Rollouts, k: int) -> torch.Tensor:
        span = (r.start, r.sequences.shape[1])
        return completion_logprobs(model, r.views[k], r.sequences, span, r.attention_mask, r.position_ids, r.media)

    def training_step(self, batch: PromptSet, batch_idx: int) -> torch.Tensor:
        cfg, step = self.grpo, self.global_step
        k = step % cfg.inner_updates
        if k == 0 or self.rollouts is None:
            self.rollouts = self.rollout(batch, step // cfg.inner_updates)
        r = self.rollouts = self.rollouts.to(self.device)
        logp = self._logp(self.model, r, k)
        old = r.old_logp[k] if cfg.inner_updates > 1 else logp.detach()
        ref = r.ref_logp[k] if cfg.beta else None
        out = grpo_loss(logp, old, ref, r.advantages, r.mask, cfg.clip_eps, cfg.beta)
        size = r.sequences.shape[0]
        self.num_masked = int(r.mask.sum())
        scored = torch.zeros_like(r.views[k], dtype=torch.bool)
        scored[:, r.start :] = r.mask
        self.trained_batch = MultimodalBatch(r.views[k], scored, attention_mask=r.attention_mask)  # not the rollouts
        loss = self.trainer.strategy.reduce(out.loss.detach().clone(), reduce_op="mean")
        if not torch.isfinite(loss):
            return self._nonfinite(float(loss))
        rewards = r.rewards.view(-1, cfg.group_size)
        self.log("loss", loss, prog_bar=True, batch_size=size)
        self.log("reward", rewards.mean(), prog_bar=True, batch_size=size)
        self.log("reward_std", rewards.std(1, unbiased=True).mean(), batch_size=size)
        self.log("kl", out.kl, batch_size=size)
        self.log("clipped", out.clipped, batch_size=size)
        self.log("completion_tokens", r.mask.float().sum(1).mean(), batch_size=size)
        return out.loss
