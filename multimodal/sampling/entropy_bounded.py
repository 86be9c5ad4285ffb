"""Entropy-bounded parallel decoding (EB-sampler): commit low-entropy candidates while their entropy fits a budget.

Masked positions are ranked by the entropy of their predictive distribution (lowest first) and the
longest prefix U of that ranking with  sum_{l in U} H(p_l) - max_{l in U} H(p_l) <= gamma  is
committed: the summed entropy of what is decoded together, beyond the single most uncertain token,
stays under the budget (which also guarantees at least one token per step). Adaptive: the loop
runs until the block is filled. gamma = 0 commits one token per step (the most certain, by entropy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig, SamplerError


@dataclass
class EntropyBoundedConfig(SamplerConfig):
    """Attributes: gamma: entropy budget in nats."""

    name: str = "entropy_bounded"
    gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma < 0:
            raise SamplerError(f"gamma must be >= 0, got {self.gamma}")


@SAMPLERS.register("entropy_bounded")
class EntropyBoundedSampler(Sampler):
    Config = EntropyBoundedConfig
    adaptive = True

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        logp = torch.log_softmax(logits.double(), dim=-1)
        return (logp.exp() * logp).sum(-1)  # negative entropy: higher is more certain

    def select(self, score: torch.Tensor, quota: torch.Tensor, step: int) -> torch.Tensor:
        sorted_score, order = score.sort(dim=-1, descending=True, stable=True)
        finite = torch.isfinite(sorted_score)
        entropy = torch.where(finite, -sorted_score, torch.zeros_like(sorted_score))  # ascending entropy
        spent = entropy.cumsum(-1) - entropy  # entropy of the prefix beyond its last (largest) element
        prefix = (spent <= self.config.gamma) & finite
        prefix[:, 0] = finite[:, 0]
        commit = torch.zeros_like(prefix)
        return commit.scatter_(-1, order, prefix)
