"""`dream`: Dream's `diffusion_generate` algorithms as one commit policy (PAPERS.md section 7).

Per block (Dream's release decodes the whole answer as one block; ``block_length = gen_length``), the
step i of n runs at times t = T[i], s = T[i+1] with T = linspace(1, eps, n + 1) in float32. Candidates
come from the logits divided by the temperature and cut by top-p / top-k (`sample_tokens`), sampled
(temperature > 0) or taken by argmax; their scores are computed from those probabilities in the logits'
dtype, as the release does:

* ``origin``: every masked position is revealed with probability 1 - s/t (all at the last step),
  independently; no score.
* ``maskgit_plus``: p(candidate); ``topk_margin``: top-1 minus top-2 probability; ``entropy``: the
  negative entropy sum p log(p + 1e-10). Each step commits k = int(m (1 - s/t)) of the m masked
  positions (all m at the last step): the k best scores (torch.topk), or with ``alg_temp`` > 0 k drawn
  without replacement from softmax(score / alg_temp).

Randomness: ``origin`` draws one uniform number per masked position in row-major order from the
step's generator, so at temperature 0 a seeded generator reproduces the release's draws from a seeded
global generator (tested). ``alg_temp`` draws with torch.multinomial over the block's positions: the
release's distribution, not its random numbers (multinomial's draws depend on the whole row it is
given, and the release gives it the canvas row, prompt included). Candidate sampling at temperature
> 0 uses this library's float64 Gumbel draw (the same distribution as the release's Categorical, not
the same random numbers).

Deviations: the release computes k from the batch's mean masked count (rows of different lengths share
one k); here each row uses its own count, so a row decodes as it would alone. Among equal scores (a
top-p / top-k cut often leaves one candidate of probability 1) the leftmost positions are committed
first; torch.topk's order among ties depends on the tensor's layout (the release ranks the whole
canvas row, prompt included), so it is no rule to reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig, SpecialIds, gumbel_argmax
from multimodal.sampling.loop_settings import SamplerError

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@dataclass
class DreamSamplerConfig(SamplerConfig):
    """Dream's generation settings on top of the shared ones (module docstring).

    Attributes:
        alg: origin | maskgit_plus | topk_margin | entropy.
        alg_temp: > 0 draws the committed positions from softmax(score / alg_temp) instead of the top k.
        top_p: keep the smallest set of candidates whose probability reaches top_p (None: all).
        top_k: keep the k most likely candidates (None: all).
        eps: the last time of the schedule T = linspace(1, eps, steps + 1).
    """

    name: str = "dream"
    alg: Literal["origin", "maskgit_plus", "topk_margin", "entropy"] = "origin"
    alg_temp: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eps: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alg not in ALGORITHMS:
            raise SamplerError(f"unknown Dream alg '{self.alg}' ({', '.join(ALGORITHMS)})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SamplerError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplerError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.eps < 1 or self.alg_temp < 0:
            raise SamplerError("eps must be in (0, 1) and alg_temp >= 0")


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the smallest most-likely set reaching probability `top_p` set to the dtype's minimum
    (the first candidate always kept)."""
    ordered, order = logits.sort(dim=-1, descending=True)
    drop = ordered.softmax(-1).cumsum(-1) > top_p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Logits below the `top_k`-th largest set to the dtype's minimum."""
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


@SAMPLERS.register("dream")
class DreamSampler(Sampler):
    """Dream's algorithms (module docstring)."""

    Config = DreamSamplerConfig

    def __init__(self, config: DreamSamplerConfig):
        super().__init__(config)
        self.block_step_count = config.steps

    @property
    def draws_noise(self) -> bool:
        return self.config.temperature > 0 or self.config.alg == "origin" or self.config.alg_temp > 0

    def steps_for(self, num_masked: torch.Tensor, block_length: int, steps_per_block: int) -> int:
        self.block_step_count = steps_per_block  # the schedule T spans this block's steps
        return steps_per_block

    def step(
        self,
        logits: torch.Tensor,
        masked: torch.Tensor,
        quota: torch.Tensor,
        special: SpecialIds,
        generator: torch.Generator | None = None,
        step: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        logits = self.forbid(logits, special)
        work = logits / cfg.temperature if cfg.temperature > 0 else logits
        if cfg.top_p is not None and cfg.top_p < 1:
            work = top_p_filter(work, cfg.top_p)
        if cfg.top_k is not None:
            work = top_k_filter(work, cfg.top_k)
        times = torch.linspace(1, cfg.eps, self.block_step_count + 1, device=logits.device)
        t, s = times[step], times[step + 1]
        last = step >= self.block_step_count - 1
        if cfg.alg == "origin":
            reveal = 1 - s / t if not last else torch.ones((), device=logits.device)
            u = torch.rand(int(masked.sum()), generator=generator, device=logits.device)  # row-major, as x[mask]
            commit = torch.zeros_like(masked)
            commit[masked] = u < reveal
            x0 = gumbel_argmax(work, 1.0 if cfg.temperature > 0 else 0.0, generator)
            return x0, commit
        x0 = gumbel_argmax(work, 1.0 if cfg.temperature > 0 else 0.0, generator)
        probs = work.softmax(-1)  # in the logits' dtype, as the release
        if cfg.alg == "maskgit_plus":
            score = probs.gather(-1, x0[..., None]).squeeze(-1)
        elif cfg.alg == "topk_margin":
            top = probs.topk(2, dim=-1).values
            score = top[..., 0] - top[..., 1]
        else:
            score = (probs * torch.log(probs + 1e-10)).sum(-1)
        score = torch.where(masked, score, torch.full_like(score, -torch.inf))
        m = masked.sum(-1)
        k = m if last else (m.to(torch.float32) * (1 - s / t)).long()
        commit = torch.zeros_like(masked)
        for row, count in enumerate(k.tolist()):
            if count <= 0:
                continue
            if cfg.alg_temp > 0:
                picked = torch.multinomial(F.softmax(score[row] / cfg.alg_temp, dim=-1), count, generator=generator)
            else:
                picked = score[row].argsort(descending=True, stable=True)[:count]  # ties: leftmost first
            commit[row, picked] = True
        return x0, commit & masked
