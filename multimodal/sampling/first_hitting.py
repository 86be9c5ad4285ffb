"""First-hitting sampler: one uniformly chosen masked token per model call, no wasted steps.

For a masked diffusion model without time conditioning, the reverse process between two unmasking
events changes nothing, so the first-hitting sampler jumps straight to the next event (its time is
t * u^(1/m) with m masked tokens) and unmasks exactly one masked position, chosen uniformly, with a
token drawn from the model at that position (temperature 1 samples exactly). The number of model
calls equals the number of masked tokens; `steps` is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig


@dataclass
class FirstHittingConfig(SamplerConfig):
    name: str = "first_hitting"
    temperature: float = 1.0


@SAMPLERS.register("first_hitting")
class FirstHittingSampler(Sampler):
    random_order = True
    Config = FirstHittingConfig
    adaptive = True

    def quota(self, num_masked: torch.Tensor, steps: int) -> torch.Tensor:
        return torch.ones(num_masked.shape[0], steps, dtype=torch.long, device=num_masked.device)

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
