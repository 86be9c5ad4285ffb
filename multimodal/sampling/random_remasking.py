"""`random` remasking (LLaDA): commit uniformly chosen masked positions."""

from __future__ import annotations

import torch

from multimodal.sampling.base import SAMPLERS, Sampler


@SAMPLERS.register("random")
class RandomSampler(Sampler):
    """Score = an independent uniform draw per position."""

    random_order = True

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
