"""Dilated unmasking (DUS): unmask a block in about log2(B) groups of mutually distant positions.

A block of B positions is split coarse-to-fine by stride: first the positions that are multiples of
B/2, then the odd multiples of B/4, then of B/8, ... and last the odd positions. Each step commits
one whole group (its masked positions, with the model's candidates), so tokens decoded together are
never adjacent and each later group sits between already-decoded neighbours. A block takes
ceil(log2(B)) steps whatever `steps` says.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig


@dataclass
class DilatedConfig(SamplerConfig):
    name: str = "dilated"


def _levels(length: int) -> int:
    """G, the number of groups (steps) of a block of `length` positions."""
    return max(1, math.ceil(math.log2(length))) if length > 1 else 1


def dilation_groups(length: int) -> torch.Tensor:
    """(length,) group index of each block position: 0 for multiples of 2^(G-1), ..., G-1 for odd positions."""
    levels = _levels(length)
    pos = torch.arange(length)
    trailing = torch.zeros(length, dtype=torch.long)
    for bit in range(levels):
        trailing += ((pos >> bit) & 1 == 0) & (trailing == bit)  # count trailing zero bits
    group = (levels - 1 - trailing).clamp_min(0)
    group[0] = 0
    return group


@functools.lru_cache(maxsize=64)
def _groups_on(length: int, device: torch.device) -> torch.Tensor:
    """`dilation_groups` on a device, built once per (length, device) rather than copied every step."""
    return dilation_groups(length).to(device)


@SAMPLERS.register("dilated")
class DilatedSampler(Sampler):
    Config = DilatedConfig

    def block_steps(self, block_length: int, steps_per_block: int) -> int:
        return _levels(block_length)

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.zeros(x0.shape, dtype=torch.float64, device=x0.device)

    def select(self, score: torch.Tensor, quota: torch.Tensor, step: int) -> torch.Tensor:
        groups = _groups_on(score.shape[-1], score.device)
        last = _levels(score.shape[-1]) - 1  # plain Python: reading groups.max() would synchronise every step
        chosen = groups <= step if step >= last else groups == step  # the last step also sweeps leftovers
        return chosen[None].expand_as(score) & torch.isfinite(score)
