"""Confidence-aware parallel decoding (Fast-dLLM): commit every candidate above a probability threshold.

Inside the current block, every masked position whose candidate probability exceeds `threshold`
is committed, and always at least the most confident one, so each step makes progress. The number
of steps is adaptive: the loop runs until the block is filled (at most one step per token).
With threshold > 1 it commits exactly one token per step, which is the reference low-confidence
sampler with steps == gen_length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig, SamplerError, candidate_probability


@dataclass
class ThresholdConfig(SamplerConfig):
    """Attributes: threshold: commit candidates whose probability is at least this (Fast-dLLM: 0.9)."""

    name: str = "threshold"
    threshold: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold <= 0:
            raise SamplerError(f"threshold must be positive, got {self.threshold}")


def best_and_above(score: torch.Tensor, above: torch.Tensor) -> torch.Tensor:
    """(B, Lb) bool: positions flagged in `above`, plus each row's best finite score."""
    best = torch.zeros_like(above)
    finite = torch.isfinite(score).any(-1)
    best.scatter_(-1, score.argmax(-1, keepdim=True), finite[:, None])
    return (above & torch.isfinite(score)) | best


@SAMPLERS.register("threshold")
class ThresholdSampler(Sampler):
    Config = ThresholdConfig
    adaptive = True

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return candidate_probability(logits, x0)

    def select(self, score: torch.Tensor, quota: torch.Tensor, step: int) -> torch.Tensor:
        return best_and_above(score, score >= self.config.threshold)
