"""Likelihood of an answer under a masked-diffusion model: the Monte-Carlo ELBO and a rolling perplexity.

ELBO (LLaDA's conditional likelihood estimator): draw a number k of masked answer tokens, mask k of
the L answer tokens uniformly at random, and score the masked ones with weight L / k:

    log p(answer | prompt) >= E_k E_mask [ (L / k) * sum_{masked i} log p(x_i | xt) ]

k is stratified across each batch of draws (k_j spread evenly over 1..L from a random offset), which
keeps the estimator unbiased and lowers its variance. The standard error is computed from
independent replicates (one per batch of stratified draws) when there are at least two of them, and
from the individual draws otherwise (then it is conservative).

Rolling perplexity: a long text is cut into windows of `window` tokens advancing by `stride`; each
window scores only its last `stride` tokens (the first window scores all of its tokens), with the
preceding tokens of the window as the prompt, so each token is scored once with up to
`window - stride` tokens of context (the strided-perplexity recipe, with the ELBO in place of the
exact log-likelihood: the result is an upper bound on the perplexity).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # (B, L) ids -> (B, L, V) logits


@dataclass(frozen=True)
class ElboEstimate:
    """Monte-Carlo ELBO of log p(answer | prompt) in nats.

    Attributes:
        log_likelihood: the estimate (a lower bound on the true log-likelihood, in expectation).
        stderr: Monte-Carlo standard error of the estimate.
        num_tokens: answer length L.
        num_draws: number of masked copies scored.
    """

    log_likelihood: float
    stderr: float
    num_tokens: int
    num_draws: int


def stratified_mask_counts(length: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch,) mask counts in 1..length, evenly spaced from a random offset (wrapping around).

    Rounding is half-up (floor(x + 0.5)), not torch.round's half-to-even: shifting the offset by one
    must shift every count by one, or some counts become likelier than others and the ELBO is biased.
    """
    k0 = torch.randint(1, length + 1, (), generator=generator)
    k = torch.floor(k0 + torch.arange(batch) * (length / batch) + 0.5).long()
    return (k - 1) % length + 1


def _random_masks(counts: torch.Tensor, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, length) bool with exactly counts[i] True entries at uniformly random places in row i."""
    scores = torch.rand(counts.shape[0], length, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # a uniformly random permutation per row
    return ranks < counts[:, None]


@torch.no_grad()
def elbo(
    logits_fn: LogitsFn,
    prompt: torch.Tensor,
    answer: torch.Tensor,
    mask_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> ElboEstimate:
    """Monte-Carlo ELBO of `answer` given `prompt`.

    Args:
        logits_fn: (B, L) token ids -> (B, L, V) logits.
        prompt: (P,) prompt ids (never masked).
        answer: (L,) answer ids.
        mask_id: mask token id.
        mc_num: number of masked copies to score; rounded up to a multiple of `batch_size`.
        batch_size: copies per forward (the stratification group).
        generator: source of randomness (on the CPU).
    """
    if answer.numel() == 0:
        raise ValueError("cannot score an empty answer")
    length = answer.numel()
    batch_size = min(batch_size, mc_num)
    n_batches = math.ceil(mc_num / batch_size)
    seq = torch.cat([prompt, answer]).long()
    draws = []
    for _ in range(n_batches):
        counts = stratified_mask_counts(length, batch_size, generator)
        is_mask = _random_masks(counts, length, generator).to(seq.device)
        xt = seq.repeat(batch_size, 1)
        xt[:, prompt.numel() :] = torch.where(is_mask, torch.full_like(is_mask, mask_id, dtype=torch.long), answer)
        logits = logits_fn(xt)[:, prompt.numel() :].float()  # (b, L, V)
        logp = -F.cross_entropy(logits.transpose(1, 2), answer.repeat(batch_size, 1), reduction="none")  # (b, L)
        per_draw = (logp * is_mask).sum(1) * (length / counts.to(logp.device))  # (b,)
        draws.append(per_draw.double().cpu())
    values = torch.stack(draws)  # (n_batches, b)
    estimate = float(values.mean())
    if n_batches >= 2:
        replicate = values.mean(1)
        stderr = float(replicate.std(unbiased=True) / math.sqrt(n_batches))
    else:
        flat = values.flatten()
        stderr = float(flat.std(unbiased=True) / math.sqrt(flat.numel())) if flat.numel() > 1 else float("nan")
    return ElboEstimate(estimate, stderr, length, int(values.numel()))


@dataclass(frozen=True)
class Perplexity:
    """Rolling perplexity bound of a long text: exp(total NLL / tokens)."""

    perplexity: float
    nll_per_token: float
    stderr_nll_per_token: float
    num_tokens: int
    num_windows: int


@torch.no_grad()
def rolling_perplexity(
    logits_fn: LogitsFn,
    ids: torch.Tensor,
    mask_id: int,
    window: int,
    stride: int | None = None,
    mc_num: int = 32,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> Perplexity:
    """Perplexity bound of a token sequence longer than the model's context (see module docstring)."""
    stride = stride or window
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    n = ids.numel()
    if n == 0:
        raise ValueError("cannot score an empty text")
    total, var, windows, pos = 0.0, 0.0, 0, 0
    while pos < n:
        end = min(pos + stride, n) if pos else min(window, n)
        start = max(0, end - window)
        est = elbo(logits_fn, ids[start:pos], ids[pos:end], mask_id, mc_num, batch_size, generator)
        total -= est.log_likelihood
        var += 0.0 if math.isnan(est.stderr) else est.stderr**2
        windows += 1
        pos = end
    nll = total / n
    return Perplexity(math.exp(nll), nll, math.sqrt(var) / n, n, windows)


@torch.no_grad()
def batch_elbo(
    logits_fn: LogitsFn,
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    draws: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo ELBO of each row's maskable tokens given the rest of the row, for a whole batch.

    The estimator of `elbo` row by row: per draw, row i masks k_i of its n_i maskable tokens (k_i
    stratified over 1..n_i across the draws from a random offset per row) and scores them with weight
    n_i / k_i; one forward per draw covers every row, so rows of different lengths and contexts (a
    peptide under each of several MHC chains) are scored together.

    Args:
        logits_fn: (B, L) token ids -> (B, L, V) logits (padding and media as the caller's batch has them).
        input_ids: (B, L) clean ids.
        maskable: (B, L) bool, the tokens scored (each row at least one).
        mask_id: mask token id.
        draws: masked copies per row.
        generator: CPU generator of the counts and masks.

    Returns:
        (B,) ELBO estimates in nats and (B,) standard errors from the draws' spread (conservative: the
        stratified draws are less variable than independent ones).
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    n = maskable.sum(1).cpu()  # (B,)
    if bool((n == 0).any()):
        raise ValueError("every row needs at least one maskable token to score")
    k0 = (torch.rand(n.shape, generator=generator) * n).long() + 1  # uniform in 1..n_i
    values = []
    for j in range(draws):
        k = (torch.floor(k0 + j * (n / draws) + 0.5).long() - 1) % n + 1  # (B,)
        scores = torch.rand(maskable.shape, generator=generator)
        scores[~maskable.cpu()] = 2.0  # never chosen
        is_mask = (scores.argsort(1).argsort(1) < k[:, None]).to(input_ids.device)  # (B, L)
        xt = torch.where(is_mask, torch.full_like(input_ids, mask_id), input_ids)
        logp = -F.cross_entropy(logits_fn(xt).float().transpose(1, 2), input_ids, reduction="none")  # (B, L)
        values.append(((logp * is_mask).sum(1) * (n.to(logp.device) / k.to(logp.device))).double().cpu())
    stacked = torch.stack(values)  # (draws, B)
    stderr = stacked.std(0, unbiased=True) / math.sqrt(draws) if draws > 1 else torch.full_like(stacked[0], math.nan)
    return stacked.mean(0), stderr
