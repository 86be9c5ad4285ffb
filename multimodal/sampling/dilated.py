"""Dilated unmasking (DUS): unmask a block in about log2(B) groups of mutually distant positions.

A block of B positions is split coarse-to-fine by stride: first the positions that are multiples of
B/2, then the odd multiples of B/4, then of B/8, ... and last the odd positions. Each step commits
one whole group (its masked positions, with the model's candidates), so tokens decoded together are
never adjacent and each later group sits between already-decoded neighbours. A block takes
ceil(log2(B)) steps whatever `steps` says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from multimodal.sampling.base import SAMPLERS, Sampler, SamplerConfig


@dataclass
class DilatedConfig(SamplerConfig):
    name: str = "dilated"


def dilation_groups(length: int) -> torch.Tensor:
    """(length,) group index of each block position: 0 for multiples of 2^(G-1), ..., G-1 for odd positions."""
    levels = max(1, math.ceil(math.log2(length))) if length > 1 else 1
    pos = torch.arange(length)
    trailing = torch.zeros(length, dtype=torch.long)
    for bit in range(levels):
        trailing += ((pos >> bit) & 1 == 0) & (trailing == bit)  # count trailing zero bits
    group = (levels - 1 - trailing).clamp_min(0)
    group[0] = 0
    return group


@SAMPLERS.register("dilated")
class DilatedSampler(Sampler):
    Config = DilatedConfig

    def block_steps(self, block_length: int, steps_per_block: int) -> int:
        return int(dilation_groups(block_length).max()) + 1

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.zeros(x0.shape, dtype=torch.float64, device=x0.device)

    def select(self, score: torch.Tensor, quota: torch.Tensor, step: int) -> torch.Tensor:
        groups = dilation_groups(score.shape[-1]).to(score.device)
        last = int(groups.max())
        chosen = groups <= step if step >= last else groups == step  # the last step also sweeps leftovers
        return chosen[None].expand_as(score) & torch.isfinite(score)
