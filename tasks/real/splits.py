"""Deterministic splits of real data sets: a unit (a peptide, a CDR3 cluster) goes to a split by a hash.

The split of a unit is blake2b(seed, key) read as a number in [0, 1) against the cumulative train /
validation / test shares, so it depends on nothing but the unit and the seed: adding rows never moves
another unit, and every row of a unit lands on the same side (which is what keeps the split leak-free).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPLITS = ("train", "validation", "test")


def check_fractions(fractions: Sequence[float]) -> None:
    """Raise unless `fractions` are three non-negative shares summing to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three shares summing to 1, got {tuple(fractions)}")


def hash_split(key: str, fractions: Sequence[float], seed: int) -> str:
    """The split of the unit named `key` (module docstring)."""
    u = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"
