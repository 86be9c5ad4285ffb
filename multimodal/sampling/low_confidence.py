"""`low_confidence` remasking (LLaDA's default): commit the candidates with the highest probability."""

from __future__ import annotations

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, candidate_probability


@SAMPLERS.register("low_confidence")
class LowConfidenceSampler(Sampler):
    """Score = softmax probability (float64) of the proposed token."""

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return candidate_probability(logits, x0)
