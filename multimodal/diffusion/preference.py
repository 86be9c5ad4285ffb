"""VRPO (LLaDA 1.5): the DPO loss on ELBO estimates, with the paper's three variance reductions.

DPO needs log pi(y | x); a masked-diffusion model only gives a Monte-Carlo lower bound B(y | x) (the
ELBO of LLaDA's SFT form: the prompt is never masked, the response is). VRPO's preference score is

    s = beta * [(B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))],   loss = -log sigmoid(s)

and the noise of the four estimates is what makes it hard to optimise. The paper lowers it three ways
(PAPERS.md section 8), each a setting of `draw_copies`:

* budget: n = timesteps x masks_per_timestep masked copies per estimate, averaged;
* allocation: for a fixed n, n timesteps with one mask each is optimal
  (Var = Var_t / n_t + E_t Var_mask / (n_t n_mask));
* antithetic sampling: policy and reference score one response on the same masked copies (the
  `MaskedCopies` drawn once, scored twice), so the noise they share cancels in B_theta - B_ref; the
  chosen and rejected responses get independent copies.

Two estimators of B, both unbiased for the same bound:

* ``rate``: t drawn from the diffusion schedule, each response token masked with probability p(t),
  weight 1 / p(t) (the SFT objective's form; the n_t times of one response are stratified over the
  schedule's range, as the objective's antithetic t);
* ``count``: l of the response's L tokens masked uniformly at random, weight L / l, with l stratified
  over 1..L across the response's n_t timesteps (LLaDA's likelihood code; lower variance).

The response is every maskable position of the row: the answer with its EOS padding, as SFT trains and
the sampler decodes it (tasks/base.py), so policy and reference score the same canvas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from multimodal.diffusion.loss import chunked_cross_entropy
from multimodal.diffusion.schedule import MaskSchedule
from multimodal.types import MediaItems, MultimodalBatch

Estimator = Literal["rate", "count"]


@dataclass(frozen=True)
class MaskedCopies:
    """The masked copies one set of ELBO estimates scores: n per response row, row-major.

    Attributes:
        input_ids: (R * n, L) corrupted rows (copy j of row r at r * n + j).
        masked: (R * n, L) bool, the masked (scored) positions.
        weight: (R * n,) float, the weight of each copy's masked log-likelihood sum (1 / p or L / l).
        copies: n, the copies per row.
    """

    input_ids: torch.Tensor
    masked: torch.Tensor
    weight: torch.Tensor
    copies: int


def _stratified(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) points (u + j / n) mod 1 in [0, 1), u uniform: one per stratum of [0, 1)."""
    u0 = torch.rand((), generator=generator)
    return (u0 + torch.arange(n) / n) % 1.0


def draw_copies(
    batch: MultimodalBatch,
    mask_id: int,
    *,
    timesteps: int,
    masks_per_timestep: int = 1,
    estimator: Estimator = "count",
    schedule: MaskSchedule | None = None,
    generator: torch.Generator | None = None,
) -> MaskedCopies:
    """Draw timesteps x masks_per_timestep masked copies of every row's response (module docstring).

    Randomness is drawn on the CPU from `generator` row by row, so a row's copies do not depend on the
    batch it shares (the same seed gives the same copies to policy and reference). The ``rate``
    estimator needs the diffusion `schedule`.
    """
    if timesteps < 1 or masks_per_timestep < 1:
        raise ValueError(f"need at least one timestep and one mask each, got {timesteps} x {masks_per_timestep}")
    if estimator == "rate" and schedule is None:
        raise ValueError("the 'rate' estimator draws t from the diffusion schedule: pass one")
    ids, maskable = batch.input_ids, batch.maskable.cpu()
    n = timesteps * masks_per_timestep
    rows, masks, weights = [], [], []
    for r in range(ids.shape[0]):
        length = int(maskable[r].sum())
        if length == 0:
            raise ValueError(f"row {r} has no response token to score")
        if estimator == "count":  # l in 1..L, one stratum of the L counts per timestep
            counts = (torch.floor(_stratified(timesteps, generator) * length).long() + 1).repeat_interleave(
                masks_per_timestep
            )
            scores = torch.rand(n, maskable.shape[1], generator=generator)
            scores[:, ~maskable[r]] = 2.0  # never chosen
            is_mask = scores.argsort(1).argsort(1) < counts[:, None]
            weight = length / counts.double()
        else:
            t = schedule.t_lo + (schedule.t_hi - schedule.t_lo) * _stratified(timesteps, generator)
            p = schedule.mask_prob(t).repeat_interleave(masks_per_timestep)
            is_mask = (torch.rand(n, maskable.shape[1], generator=generator) < p[:, None]) & maskable[r]
            weight = schedule.loss_weight(t).double().repeat_interleave(masks_per_timestep)
        rows.append(torch.where(is_mask.to(ids.device), mask_id, ids[r].expand(n, -1)))
        masks.append(is_mask)
        weights.append(weight)
    device = ids.device
    return MaskedCopies(torch.cat(rows), torch.cat(masks).to(device), torch.cat(weights).to(device, torch.float32), n)


def _repeat_rows(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if t is None else t.repeat_interleave(n, dim=0)


def copies_elbo(model: Any, batch: MultimodalBatch, copies: MaskedCopies, chunk_size: int = 1024) -> torch.Tensor:
    """(R,) ELBO estimate of each row's response: the mean over its copies of weight x the summed
    log-likelihood of the masked tokens. Differentiable when grad is enabled (the policy); call it
    under torch.no_grad() for the reference. The head runs on the masked positions only."""
    n = copies.copies
    media = None
    if batch.modality_inputs:
        media = MediaItems(
            {k: _repeat_rows(v, n) for k, v in batch.modality_inputs.items()},
            {k: _repeat_rows(v, n) for k, v in batch.modality_masks.items()},
        )
    out = model(
        copies.input_ids,
        attention_mask=_repeat_rows(batch.attention_mask, n),
        position_ids=_repeat_rows(batch.position_ids, n),
        return_logits=False,
        media=media,
    )
    targets = _repeat_rows(batch.input_ids, n)
    ce, _ = chunked_cross_entropy(out.hidden_states[copies.masked], model.head, targets[copies.masked], chunk_size)
    copy_of = torch.arange(copies.input_ids.shape[0], device=ce.device).repeat_interleave(copies.masked.sum(1))
    per_copy = torch.zeros(copies.input_ids.shape[0], device=ce.device, dtype=ce.dtype).index_add(0, copy_of, -ce)
    return (per_copy * copies.weight).view(-1, n).mean(1)


@dataclass(frozen=True)
class PreferenceScores:
    """The four ELBO estimates of a batch of pairs and VRPO's score (each (P,))."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    score: torch.Tensor


def preference_score(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> PreferenceScores:
    """s = beta [(B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))] per pair."""
    score = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return PreferenceScores(policy_chosen, policy_rejected, reference_chosen, reference_rejected, score)


def dpo_loss(scores: PreferenceScores) -> torch.Tensor:
    """-log sigmoid(s), the mean over pairs."""
    return -F.logsigmoid(scores.score).mean()
