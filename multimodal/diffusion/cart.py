"""CART (context-adaptive token-level noise rescheduling), Dream's token weight, in place of 1/t.

A masked token n is weighted by how much clean context lies near it: w(n) = 1/2 sum over clean tokens
i != n of p (1 - p)^(|n - i| - 1), a geometric kernel of the distance (PAPERS.md section 7; p = 0.3 as
public re-implementations use). More and nearer clean neighbours, more weight; a token in a long
masked run weighs little, whatever the row's sampled t.
"""

from __future__ import annotations

import torch


def cart_weights(masked: torch.Tensor, real: torch.Tensor | None, p: float = 0.3) -> torch.Tensor:
    """(B, L) CART weight of every position (used at the masked ones).

    Args:
        masked: (B, L) bool, positions that were masked.
        real: (B, L) 1 for tokens, 0 for padding (padding is no context), or None (all real).
        p: the kernel's geometric rate, in (0, 1].
    """
    if not 0 < p <= 1:
        raise ValueError(f"the CART rate p must be in (0, 1], got {p}")
    n = masked.shape[1]
    pos = torch.arange(n, device=masked.device)
    distance = (pos[:, None] - pos[None, :]).abs()
    kernel = torch.where(distance > 0, p * (1 - p) ** (distance.float() - 1), torch.zeros((), device=masked.device))
    clean = ~masked if real is None else (~masked) & real.bool()
    return 0.5 * clean.float() @ kernel  # (B, L): row i of the kernel is symmetric in (n, i)
