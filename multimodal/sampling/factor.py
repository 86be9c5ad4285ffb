"""The factor rule of Fast-dLLM: commit the n most confident candidates while each passes 1 - f / (n + 1).

Masked candidates are sorted by probability; the one of rank n (1-based) passes when its
probability is at least 1 - factor / (n + 1), and the longest passing prefix of the ranking is
committed (always at least the best one). The bound comes from Fast-dLLM's analysis: committing n
tokens in parallel is safe when (n + 1)(1 - p_n) < factor. Adaptive: the loop runs until the block is
filled. With factor 0 it commits exactly one token per step (the reference sampler with steps ==
gen_length). Fast-dLLM's code also commits the last-ranked candidate when it alone fails; that quirk
is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig, SamplerError, candidate_probability


@dataclass
class FactorConfig(SamplerConfig):
    """Attributes: factor: the f of the rule above (Fast-dLLM's default is 1.0)."""

    name: str = "factor"
    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 0:
            raise SamplerError(f"factor must be >= 0, got {self.factor}")


@SAMPLERS.register("factor")
class FactorSampler(Sampler):
    Config = FactorConfig
    adaptive = True

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return candidate_probability(logits, x0)

    def select(self, score: torch.Tensor, quota: torch.Tensor, step: int) -> torch.Tensor:
        sorted_score, order = score.sort(dim=-1, descending=True, stable=True)  # -inf (not masked) last
        rank = torch.arange(1, score.shape[-1] + 1, device=score.device, dtype=score.dtype)  # 1-based
        passes = sorted_score >= 1.0 - self.config.factor / (rank + 1.0)
        passes[:, 0] = True  # the best candidate always goes
        passes &= torch.isfinite(sorted_score)
        prefix = passes.long().cumprod(-1).bool()  # the longest passing prefix of the ranking
        commit = torch.zeros_like(prefix)
        return commit.scatter_(-1, order, prefix)
