"""The settings of the post-training stages: an experiment with a ``vrpo:`` section trains with VRPO,
one with a ``grpo:`` section with diffu-GRPO (never both); everything else (backbone, task, sampler,
train, modalities, `init_from`: the SFT checkpoint both start from) is the experiment's as for SFT.

Defaults follow the papers' stated settings (PAPERS.md section 8) where they fit any model size; the
embedded configs shrink the budgets for the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class VRPOConfig:
    """VRPO (multimodal/diffusion/preference.py).

    Attributes:
        data: preference pairs as JSON lines (``prompt``, ``chosen``, ``rejected``, optional ``media``:
            modality -> file path, relative to the file's folder); bad rows are counted and skipped.
        beta: DPO's inverse temperature.
        timesteps: n_t, timesteps per ELBO estimate (the paper's budget n = 8 with one mask each).
        masks_per_timestep: n_mask, masked copies per timestep (n = timesteps x masks_per_timestep).
        estimator: ``count`` (l of L tokens masked, weight L / l, stratified) or ``rate`` (t from the
            diffusion schedule, weight 1 / p(t)).
        antithetic: policy and reference score the same masked copies of a response.
        reference: a run or checkpoint folder with the reference weights (None: the starting policy,
            i.e. `init_from`, frozen).
    """

    data: str = ""
    beta: float = 0.2
    timesteps: int = 8
    masks_per_timestep: int = 1
    estimator: Literal["count", "rate"] = "count"
    antithetic: bool = True
    reference: str | None = None


@dataclass
class GRPOConfig:
    """diffu-GRPO (multimodal/diffusion/grpo.py); prompts are the task's `split`, rewards compare a
    completion with the example's reference answer.

    Attributes:
        split: the task split whose prompts are rolled out.
        group_size: completions per prompt (train.batch_size counts prompts per step).
        inner_updates: mu, optimiser steps on each batch of rollouts (one rollout every mu steps, each
            step with its own prompt mask; train.max_steps counts optimiser steps).
        beta: weight of the k3 KL to the reference (0: no reference pass).
        clip_eps: clip range of the probability ratio.
        prompt_mask_rate: probability of masking each prompt token in the log-probability forward.
        scale_rewards: divide advantages by the group's reward std (d1's release does not).
        rewards: reward name -> weight, summed (multimodal/posttrain/rewards.py: ``exact_match``,
            ``char_accuracy``, or ``task.<metric>`` for any metric of the task, e.g. ``task.wer: -1``).
        rollout: sampler settings that replace the experiment's `sampler` for rollouts (d1: temperature
            0.9, block 32, 128 steps for 256 tokens); evaluation keeps the experiment's sampler.
        reference: a run or checkpoint folder with the reference weights (None: the starting policy;
            with LoRA adapters that start at zero, the backbone with its adapters switched off).
    """

    split: str = "train"
    group_size: int = 6
    inner_updates: int = 12
    beta: float = 0.04
    clip_eps: float = 0.5
    prompt_mask_rate: float = 0.15
    scale_rewards: bool = False
    rewards: dict[str, float] = field(default_factory=lambda: {"exact_match": 1.0})
    rollout: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.9})
    reference: str | None = None


def check_posttrain(vrpo: VRPOConfig | None, grpo: GRPOConfig | None, pack_length: int, streaming: bool) -> None:
    """The cross-field checks of a post-training experiment (ValueError naming the setting)."""
    if vrpo is None and grpo is None:
        return
    if vrpo is not None and grpo is not None:
        raise ValueError("an experiment is one stage: give either a vrpo or a grpo section, not both")
    if pack_length or streaming:
        raise ValueError("vrpo and grpo read their own data: train.pack_length and train.streaming do not apply")
    if vrpo is not None:
        if not vrpo.data:
            raise ValueError("vrpo.data: name the JSON-lines file of preference pairs")
        if vrpo.timesteps < 1 or vrpo.masks_per_timestep < 1:
            raise ValueError("vrpo.timesteps and vrpo.masks_per_timestep must be at least 1")
    if grpo is not None:
        if grpo.group_size < 2:
            raise ValueError(f"grpo.group_size must be at least 2 (advantages compare a group), got {grpo.group_size}")
        if grpo.inner_updates < 1:
            raise ValueError(f"grpo.inner_updates must be at least 1, got {grpo.inner_updates}")
        if not 0.0 <= grpo.prompt_mask_rate < 1.0:
            raise ValueError(f"grpo.prompt_mask_rate must be in [0, 1), got {grpo.prompt_mask_rate}")
        if not grpo.rewards:
            raise ValueError("grpo.rewards: name at least one reward")
