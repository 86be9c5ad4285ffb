"""The DSM sampler (protein sequences): steps from the number of masks, four remasking rules.

Per block, the number of steps is max(1, masks // step_divisor) with masks the most masks of any row of
the batch (``steps_from: row``, the default: a row decodes in the same number of steps alone or in a
batch), or, as DSM's released sampler counts them, all masks of the batch together (``steps_from:
batch``: more steps the more rows, so a batched run depends on the batch's composition). Each step
commits each row's masks spread evenly over the steps, so no mask is left for a final pass. Candidates
are drawn with float64 Gumbel noise at `temperature` (DSM: 1.0 gives the most natural amino-acid
composition) and never from `forbid_ids` (cls / eos / pad / mask and other non-residue tokens). Which
candidates go first:

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
    """Attributes: step_divisor (steps = masks // divisor), steps_from (``row``: the most masks of a row;
    ``batch``: all masks of the batch, as released), remasking rule (forbid_ids: non-residues)."""

    name: str = "dsm"
    temperature: float = 1.0
    step_divisor: int = 1
    steps_from: Literal["row", "batch"] = "row"
    remasking: Literal["random", "low_confidence", "low_logit", "dual"] = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_divisor <= 0:
            raise SamplerError(f"step_divisor must be positive, got {self.step_divisor}")
        if self.steps_from not in ("row", "batch"):
            raise SamplerError(f"steps_from must be 'row' or 'batch', got {self.steps_from!r}")
        if self.remasking not in REMASKING:
            raise SamplerError(f"unknown remasking {self.remasking!r} ({', '.join(REMASKING)})")


def _random(logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)


def _low_confidence(logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return candidate_probability(logits, x0)


def _low_logit(logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return logits.double().gather(-1, x0[..., None]).squeeze(-1)


def _dual(logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return _low_confidence(logits, x0, generator) * _random(logits, x0, generator)


# remasking rule -> (score of each candidate, whether the order is drawn at random)
REMASKING = {
    "random": (_random, True),
    "low_confidence": (_low_confidence, False),
    "low_logit": (_low_logit, False),
    "dual": (_dual, True),
}


@SAMPLERS.register("dsm")
class DSMSampler(Sampler):
    Config = DSMConfig

    def __init__(self, config: DSMConfig):
        super().__init__(config)
        self._score, self.random_order = REMASKING[config.remasking]  # the rule, resolved once

    def steps_for(self, num_masked: torch.Tensor, block_length: int, steps_per_block: int) -> int:
        masks = num_masked.sum() if self.config.steps_from == "batch" else num_masked.max()
        return max(1, int(masks) // self.config.step_divisor)

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self._score(logits, x0, generator)
