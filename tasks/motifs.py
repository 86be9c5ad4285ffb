"""Position-specific views of short binders (peptides, CDR3s): profiles, per-position JS, a PSSM baseline, AUROC.

* `position_profile`: per-position amino-acid frequencies of equal-length sequences, (L, 20).
* `js_per_position`: Jensen-Shannon divergence (base 2, so in [0, 1]) between two profiles, row by row.
* `PSSM`: the classic position-specific scoring matrix of a binder set, per peptide length: log-odds
  log2(q_{L,i}(a) / b(a)) with q the binders' frequencies at position i of length-L binders smoothed by
  `pseudocount` pseudo-observations spread as the background b (the amino-acid composition of all
  training peptides, binders or not). A length without training binders scores 0 (the background). It is
  the baseline the diffusion model's ELBO ranking is compared with, fitted on the same training rows.
* `informative_positions`: the positions whose binder profile is furthest from the background (relative
  entropy), i.e. the anchors, read from the data rather than named by hand.
* `auroc`: the Mann-Whitney estimate with ties counted one half.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
_INDEX = {a: i for i, a in enumerate(RESIDUES)}


def composition(sequences: Iterable[str]) -> np.ndarray:
    """(20,) amino-acid frequencies over all residues of `sequences` (letters outside the 20 ignored)."""
    counts = np.zeros(len(RESIDUES))
    for s in sequences:
        for a in s:
            if a in _INDEX:
                counts[_INDEX[a]] += 1
    if counts.sum() == 0:
        raise ValueError("no standard residues to count")
    return counts / counts.sum()


def position_profile(sequences: Sequence[str], length: int | None = None) -> np.ndarray:
    """(L, 20) per-position frequencies of sequences of one length (`length`, else the first's)."""
    if not sequences:
        raise ValueError("no sequences for a profile")
    length = length or len(sequences[0])
    counts = np.zeros((length, len(RESIDUES)))
    for s in sequences:
        if len(s) != length:
            raise ValueError(f"profile of length {length} given a sequence of length {len(s)}")
        for i, a in enumerate(s):
            if a in _INDEX:
                counts[i, _INDEX[a]] += 1
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def js_per_position(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(L,) Jensen-Shannon divergence in bits between rows of two (L, 20) profiles."""
    if p.shape != q.shape:
        raise ValueError(f"profiles of different shapes {p.shape} and {q.shape}")
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / m), 0.0)
        return terms.sum(1)

    return (kl(p) + kl(q)) / 2


def informative_positions(profile: np.ndarray, background: np.ndarray, top: int = 2) -> list[int]:
    """0-based indices of the `top` positions with the largest relative entropy to the background."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(profile > 0, profile * np.log2(profile / background), 0.0).sum(1)
    return sorted(int(i) for i in np.argsort(-rel)[:top])


class PSSM:
    """Per-length log-odds matrices fitted on binders, with a background composition.

    Args:
        binders: training binder sequences (any lengths).
        background: (20,) composition the log-odds are taken against.
        pseudocount: pseudo-observations per position, spread as the background.
    """

    def __init__(self, binders: Sequence[str], background: np.ndarray, pseudocount: float = 1.0):
        if pseudocount <= 0:
            raise ValueError(f"pseudocount must be positive, got {pseudocount}")
        self.background = np.asarray(background, dtype=float)
        by_length: dict[int, list[str]] = defaultdict(list)
        for s in binders:
            by_length[len(s)].append(s)
        self.matrices: dict[int, np.ndarray] = {}
        for length, group in by_length.items():
            counts = position_profile(group, length) * len(group)
            q = (counts + pseudocount * self.background) / (len(group) + pseudocount)
            self.matrices[length] = np.log2(q / self.background)  # (L, 20)

    def score(self, peptide: str) -> float:
        """Summed log-odds (bits); 0 for a length no training binder had."""
        matrix = self.matrices.get(len(peptide))
        if matrix is None:
            return 0.0
        return float(sum(matrix[i, _INDEX[a]] for i, a in enumerate(peptide) if a in _INDEX))


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties counted 1/2.

    Raises:
        ValueError: without at least one positive and one negative.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("AUROC needs both positives and negatives")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
