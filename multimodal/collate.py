"""Media in prompts: placeholder expansion and item stacking, shared by tasks and released-model prompts.

Collation, not decoding: its users lay prompts out (tasks/base.py, llada_v.py), so it sits beside
types.py, which tasks may import, rather than in sampling/.

A prompt names each media item by one placeholder token; the model splices as many embeddings as
the item gives (multimodal/model.py), so before decoding each placeholder is repeated that many
times, and the items of a batch are stacked as (B, K, ...) with a (B, K) mask of those present
(items of different shapes zero-padded to the largest).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def expand_placeholders(
    tokens: Sequence[int], placeholder_id: int, counts: Sequence[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """`tokens` with the i-th placeholder repeated counts[i] times, and (old position, tokens added) per
    placeholder (to shift spans that follow it)."""
    if sum(t == placeholder_id for t in tokens) != len(counts):
        raise ValueError(f"{sum(t == placeholder_id for t in tokens)} placeholders for {len(counts)} items")
    left = iter(counts)
    expanded: list[int] = []
    shifts: list[tuple[int, int]] = []
    for pos, t in enumerate(tokens):
        if t == placeholder_id:
            n = int(next(left))
            expanded += [t] * n
            shifts.append((pos, n - 1))
        else:
            expanded.append(t)
    return expanded, shifts


def stack_items(rows: Sequence[Sequence[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Items per row -> (B, K, ...) zero-padded to the largest item and (B, K) presence; None without items."""
    k = max((len(r) for r in rows), default=0)
    if k == 0:
        return None
    first = next(x for r in rows for x in r)
    shape = [max(x.shape[d] for r in rows for x in r) for d in range(first.dim())]
    stacked = torch.zeros(len(rows), k, *shape)  # float32, whatever the items hold (as models take them)
    present = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, items in enumerate(rows):
        for j, x in enumerate(items):
            stacked[(i, j, *[slice(0, n) for n in x.shape])] = x
            present[i, j] = True
    return stacked, present
