"""Masking schedules (LLaDA linear, MDLM log-linear and cosine) and time sampling.

A schedule maps a time t in [0, 1] to the masking probability p(t) = 1 - alpha(t) and to the weight
of a masked token's cross-entropy, -alpha'(t) / (1 - alpha(t)) (MDLM). For LLaDA's linear schedule
p = (1 - eps) t + eps the released training code divides by p itself, and so do we. Times are drawn
independently or antithetically (t_i = (u + i / B) mod 1, MDLM), optionally restricted to mask
rates in [clip_low, clip_high] (BD3-LM's clipped schedules).
"""

from __future__ import annotations

import math

import torch

from multimodal.registry import new_registry

SCHEDULES = new_registry("schedule", "masking schedule")


class MaskSchedule:
    """Base class: subclasses define `mask_prob`, `loss_weight` and `time_of` (the inverse of mask_prob)."""

    name = "base"

    def __init__(self, eps: float = 1e-3, clip_low: float | None = None, clip_high: float | None = None):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        self.eps = eps
        lo = self.time_of(clip_low) if clip_low is not None else self.t_min
        hi = self.time_of(clip_high) if clip_high is not None else 1.0
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"clipped mask rates [{clip_low}, {clip_high}] give an empty time range")
        self.t_lo, self.t_hi = lo, hi

    @property
    def t_min(self) -> float:
        """Smallest time drawn, so that p(t) > 0 and the weight stays finite."""
        return 0.0

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def time_of(self, p: float) -> float:
        raise NotImplementedError

    def sample_t(
        self,
        batch_size: int,
        *,
        antithetic: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """(B,) times in [t_lo, t_hi); antithetic draws cover the range evenly across the batch."""
        if antithetic:
            u0 = torch.rand((), generator=generator, device=device)
            u = (u0 + torch.arange(batch_size, device=device) / batch_size) % 1.0
        else:
            u = torch.rand(batch_size, generator=generator, device=device)
        return self.t_lo + (self.t_hi - self.t_lo) * u


@SCHEDULES.register("llada_linear")
class LLaDALinear(MaskSchedule):
    """p = (1 - eps) t + eps, weight 1 / p (LLaDA pre-training and SFT)."""

    name = "llada_linear"

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.eps) * t + self.eps

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / self.mask_prob(t)

    def time_of(self, p: float) -> float:
        return min(max((p - self.eps) / (1.0 - self.eps), 0.0), 1.0)


@SCHEDULES.register("loglinear")
class LogLinear(MaskSchedule):
    """MDLM log-linear: alpha(t) = 1 - (1 - eps) t, so p = (1 - eps) t and weight 1 / t."""

    name = "loglinear"

    @property
    def t_min(self) -> float:
        return max(self.eps, 1e-4)

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.eps) * t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / t

    def time_of(self, p: float) -> float:
        return min(max(p / (1.0 - self.eps), 0.0), 1.0)


@SCHEDULES.register("cosine")
class Cosine(MaskSchedule):
    """alpha(t) = cos(pi t / 2): p = 1 - cos(pi t / 2), weight (pi / 2) sin(pi t / 2) / p."""

    name = "cosine"

    @property
    def t_min(self) -> float:
        return max(self.eps, 1e-4)

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t) / self.mask_prob(t)

    def time_of(self, p: float) -> float:
        return (2.0 / math.pi) * math.acos(min(max(1.0 - p, 0.0), 1.0))


@SCHEDULES.register("constant")
class Constant(MaskSchedule):
    """A fixed mask rate and weight 1: the masked-LM objective (BERT / ESM: 15%), the DSM baseline."""

    name = "constant"

    def __init__(self, rate: float = 0.15, **kwargs):
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"mask rate must be in (0, 1], got {rate}")
        self.rate = rate
        self.eps = 0.0
        self.t_lo, self.t_hi = 0.0, 1.0

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.rate)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def time_of(self, p: float) -> float:
        return 0.5


def create_schedule(
    name: str, eps: float = 1e-3, clip_low: float | None = None, clip_high: float | None = None, mask_rate: float = 0.15
) -> MaskSchedule:
    if name == "constant":
        return SCHEDULES.create(name, rate=mask_rate)
    return SCHEDULES.create(name, eps=eps, clip_low=clip_low, clip_high=clip_high)


def list_schedules(pattern: str = "*") -> list[str]:
    return SCHEDULES.names(pattern)
