"""Task metrics. Exact match for now; WER, VQA accuracy and protein metrics join as their tasks land."""

from __future__ import annotations

from collections.abc import Sequence


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after stripping surrounding whitespace."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references to score")
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def token_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of reference characters reproduced at the same position (length differences count as errors)."""
    total = hits = 0
    for p, r in zip(predictions, references, strict=True):
        total += max(len(p), len(r))
        hits += sum(a == b for a, b in zip(p, r, strict=False))
    return hits / total if total else 1.0
