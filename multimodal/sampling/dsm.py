"""The DSM sampler (protein sequences): steps from the number of masks, four remasking rules.

Per block, the number of steps is max(1, masks // step_divisor) (the most masks of any row in the
batch), and each step commits the block's masks spread evenly over them, so no mask is left for a
final pass. Candidates are drawn with float64 Gumbel noise at `temperature` (DSM: 1.0 gives the
most natural amino-acid composition) and never from `forbid_ids` (cls / eos / pad / mask and other
non-residue tokens). Which candidates go first:

* ``random`` (DSM's default): uniformly random positions;
* ``low_confidence``: the most probable candidates;
* ``low_logit``: the candidates with the largest raw logit;
* ``dual``: probability times a uniform draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig, SamplerError, candidate_probability


@dataclass
class DSMConfig(SamplerConfig):
    """Attributes: step_divisor (steps = masks // divisor), remasking rule (forbid_ids: non-residues)."""

    name: str = "dsm"
    temperature: float = 1.0
    step_divisor: int = 1
    remasking: Literal["random", "low_confidence", "low_logit", "dual"] = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_divisor <= 0:
            raise SamplerError(f"step_divisor must be positive, got {self.step_divisor}")


@SAMPLERS.register("dsm")
class DSMSampler(Sampler):
    Config = DSMConfig

    @property
    def random_order(self) -> bool:
        return self.config.remasking in ("random", "dual")

    def steps_for(self, num_masked: torch.Tensor, block_length: int, steps_per_block: int) -> int:
        return max(1, int(num_masked.max()) // self.config.step_divisor)

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        rule = self.config.remasking
        if rule == "random":
            return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        if rule == "low_logit":
            return logits.double().gather(-1, x0[..., None]).squeeze(-1)
        p = candidate_probability(logits, x0)
        if rule == "dual":
            return p * torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        return p
