"""diffu-GRPO (d1): group-relative policy optimisation with a one-forward, mean-field log-likelihood.

A masked-diffusion model has no cheap exact log pi(o | q). d1 approximates the per-token
log-probabilities of a completion o by one forward in which every completion token is masked and each
prompt token is masked independently with probability 0.15 (PAPERS.md section 8): log pi(o_k | q')
for each completion position k, read off that one forward (no 1/t weight). The prompt masking is a
random perturbation of the conditioning that acts as regularisation; a fresh prompt mask is drawn for
each inner iteration, and the old policy, the reference and the current policy all score the same
masked view of the iteration.

Per completion token (up to and including the first EOS; after it everything is EOS padding):

    loss_k = -min(rho_k A, clip(rho_k, 1 - eps, 1 + eps) A) + beta KL_k3,
    rho_k = exp(l_k - l_old_k),   KL_k3 = exp(r_k - l_k) - (r_k - l_k) - 1

with l the current, l_old the rollout policy's and r the reference's log-probability, averaged over
every completion token of the batch. A is the completion's advantage: its reward minus the mean reward
of its group (the completions of one prompt). d1's released code does not divide by the group's
standard deviation, and neither do we by default (`group_advantages(scale=False)`): dividing
up-weights groups whose rewards barely differ (nearly solved or nearly hopeless prompts), a
question-level difficulty bias; ``scale=True`` gives the original GRPO's normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from multimodal.types import Media


def completion_mask(generated: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
    """(B, C) bool: the completion tokens up to and including the first stop token (EOS or EoT) of
    each row; a row without one is all True."""
    stops = torch.zeros_like(generated, dtype=torch.bool)
    for tok in stop_ids:
        stops |= generated == tok
    before = stops.long().cumsum(1) - stops.long()  # stop tokens strictly before each position
    return before == 0


def prompt_masked_view(
    ids: torch.Tensor,
    prompt_maskable: torch.Tensor,
    completion: tuple[int, int],
    mask_id: int,
    rate: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, L) the input of the log-probability forward: ids with the completion columns
    [completion[0], completion[1]) all masked and each `prompt_maskable` position masked with
    probability `rate` (drawn on `generator`'s device)."""
    u = torch.rand(ids.shape, generator=generator, device=generator.device if generator else ids.device)
    drop = (u.to(ids.device) < rate) & prompt_maskable
    drop[:, completion[0] : completion[1]] = True
    return torch.where(drop, mask_id, ids)


def completion_logprobs(
    model: Any,
    view: torch.Tensor,
    targets: torch.Tensor,
    completion: tuple[int, int],
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    media: Media | None = None,
) -> torch.Tensor:
    """(B, C) log pi(target_k | view) at the completion columns, from one forward (differentiable when
    grad is enabled); the head runs on the completion columns only."""
    c0, c1 = completion
    out = model(view, attention_mask=attention_mask, position_ids=position_ids, return_logits=False, media=media)
    logits = model.head(out.hidden_states[:, c0:c1]).float()  # (B, C, V)
    return -F.cross_entropy(logits.transpose(1, 2), targets[:, c0:c1], reduction="none")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False) -> torch.Tensor:
    """(N,) reward minus its group's mean; rows are grouped consecutively, `group_size` per prompt.
    With `scale`, also divided by the group's standard deviation (+ 1e-4), as the original GRPO."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size).double()
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale:
        adv = adv / (grouped.std(1, keepdim=True, unbiased=True) + 1e-4)
    return adv.flatten().to(rewards.dtype if rewards.is_floating_point() else torch.float32)


@dataclass(frozen=True)
class GRPOLoss:
    """The diffu-GRPO loss of a batch and what it was computed from (floats for logging).

    Attributes:
        loss: scalar to back-propagate.
        kl: mean k3 KL to the reference over the completion tokens (0 without a reference).
        clipped: share of completion tokens whose ratio was clipped (the clipped term was the minimum).
        ratio: mean probability ratio rho.
    """

    loss: torch.Tensor
    kl: float
    clipped: float
    ratio: float


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    beta: float,
) -> GRPOLoss:
    """The per-token clipped surrogate plus beta x k3 KL, averaged over the `mask` tokens of the batch.

    Args:
        logp: (B, C) current log-probabilities (with gradient).
        old_logp: (B, C) the rollout policy's (no gradient; equal to logp.detach() with one inner update).
        ref_logp: (B, C) the reference's, or None when beta is 0.
        advantages: (B,) one per completion.
        mask: (B, C) bool, the completion tokens scored.
        clip_eps: the ratio's clip range.
        beta: weight of the KL term.
    """
    if beta and ref_logp is None:
        raise ValueError("beta > 0 needs the reference's log-probabilities")
    weight = mask.float()
    count = weight.sum().clamp_min(1.0)
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None].float()
    plain, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(plain, clipped)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        diff = ref_logp - logp
        kl = torch.exp(diff) - diff - 1
        if beta:
            per_token = per_token + beta * kl
    loss = (per_token * weight).sum() / count
    with torch.no_grad():
        was_clipped = (clipped < plain).float()
        return GRPOLoss(
            loss,
            float((kl * weight).sum() / count),
            float((was_clipped * weight).sum() / count),
            float((ratio * weight).sum() / count),
        )
