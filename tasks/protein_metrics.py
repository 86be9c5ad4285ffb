"""Protein evaluation metrics of DSM (PAPERS.md section 5), checked against the authors' evaluation code.

Mask filling (per masked position, over every masked position of the evaluation set pooled):
accuracy; F1 with *support-weighted* averaging over the amino-acid classes present in the targets (DSM
calls scikit-learn's ``f1_score(average="weighted", zero_division=0)``); cross-entropy in nats and
perplexity = exp(cross-entropy). DSM averages per-batch mean cross-entropies; `MaskedTokenMetrics`
takes the mean over all masked tokens, which is the same when every batch masks the same number.

ASc = L / (S(a,a) - S(a,b) + L), with S a Needleman-Wunsch score (BLOSUM62, linear gap -10 per
residue, end gaps penalised), a the reference, b the prediction and L the longer length. DSM scores
the argmax decode of the whole sequence (unmasked positions included) against the reference, after
mapping letters outside the 20 standard ones to X.

k-mer Jensen-Shannon divergence: k-mers containing a letter outside the 20 standard ones are skipped
(as in DSM); frequencies over the union of k-mers of both sets; log base 2, so it lies in [0, 1]. DSM
adds a 1e-9 pseudocount to every k-mer (``pseudocount=1e-9`` reproduces it; the default 0 is exact).

Identity (diversity, novelty and the proteome split): identical aligned positions / length of the
shorter sequence, from a semi-global alignment (a global alignment whose end gaps are free, so a
fragment inside a longer protein scores 1.0) with BLOSUM62 and affine gaps, parasail convention
open 11 / extend 1 (a gap of k residues costs 11 + (k - 1)). The longer sequence is always the query,
so identity(a, b) == identity(b, a).

Low complexity: SEG's trigger stage (Wootton & Federhen 1993): a residue is low-complexity when it
lies in any window of 12 residues whose Shannon entropy is below 2.2 bits (SEG's defaults W=12,
K1=2.2; the extension stage with K2 is omitted). Sequences shorter than the window have no windows.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

STANDARD = frozenset("ACDEFGHIKLMNPQRSTVWY")
_NOT_IN_MATRIX = re.compile(r"[^ACDEFGHIKLMNPQRSTVWY]")
ASC_GAP = 10
IDENTITY_GAP_OPEN, IDENTITY_GAP_EXTEND = 11, 1


# ---------------------------------------------------------------- mask filling


def masked_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int, average: str = "weighted") -> float:
    """F1 of predicted vs target class ids (1-D, masked positions only).

    Args:
        pred, target: (N,) integer tensors.
        num_classes: vocabulary size V.
        average: ``weighted`` (DSM: per-class F1 weighted by target support), ``macro`` (unweighted over
            classes present in target or prediction) or ``micro`` (= accuracy for single-label data).
    """
    if pred.shape != target.shape or pred.dim() != 1:
        raise ValueError(f"pred and target must be equal 1-D shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if target.numel() == 0:
        raise ValueError("no masked positions to score")
    tp, n_pred, n_true = _class_counts(pred, target, num_classes)
    return _f1_from_counts(tp, n_pred, n_true, average)


def _class_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    hit = pred == target
    tp = torch.bincount(target[hit], minlength=num_classes).double()
    n_pred = torch.bincount(pred, minlength=num_classes).double()
    n_true = torch.bincount(target, minlength=num_classes).double()
    return tp, n_pred, n_true


def _f1_from_counts(tp: torch.Tensor, n_pred: torch.Tensor, n_true: torch.Tensor, average: str) -> float:
    if average == "micro":
        return float(tp.sum() / n_true.sum())
    precision = torch.where(n_pred > 0, tp / n_pred.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(n_true > 0, tp / n_true.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    if average == "weighted":
        return float((f1 * n_true).sum() / n_true.sum())
    if average == "macro":
        present = (n_true > 0) | (n_pred > 0)
        return float(f1[present].mean())
    raise ValueError(f"average must be 'weighted', 'macro' or 'micro', got {average!r}")


class MaskedTokenMetrics:
    """Accumulates accuracy, F1, cross-entropy and perplexity at masked positions over batches.

    `update` takes logits or log-probabilities (B, L, V) (log_softmax is idempotent on log-probs),
    the clean tokens x0 (B, L) and the boolean mask (B, L) of positions to score. Only per-class
    counts (3 x V) are kept, so large vocabularies are fine.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.tp = torch.zeros(num_classes, dtype=torch.float64)
        self.n_pred = torch.zeros_like(self.tp)
        self.n_true = torch.zeros_like(self.tp)
        self.nll_sum = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> None:
        if logits.shape[:-1] != x0.shape or x0.shape != masked.shape or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"need logits (B, L, {self.num_classes}), x0 (B, L), masked (B, L); got "
                f"{tuple(logits.shape)}, {tuple(x0.shape)}, {tuple(masked.shape)}"
            )
        scores = logits[masked].double()  # (N, V): only the masked positions
        target = x0[masked].long()  # (N,)
        if target.numel() == 0:
            return
        logp = torch.log_softmax(scores, dim=-1)
        self.nll_sum += float(-logp.gather(1, target[:, None]).sum())
        pred = scores.argmax(dim=-1)
        tp, n_pred, n_true = _class_counts(pred.cpu(), target.cpu(), self.num_classes)
        self.tp += tp
        self.n_pred += n_pred
        self.n_true += n_true
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        """accuracy, f1 (weighted, as DSM), f1_macro, cross_entropy (nats), perplexity, masked_tokens."""
        if self.count == 0:
            raise ValueError("no masked positions were scored")
        ce = self.nll_sum / self.count
        return {
            "accuracy": float(self.tp.sum()) / self.count,
            "f1": _f1_from_counts(self.tp, self.n_pred, self.n_true, "weighted"),
            "f1_macro": _f1_from_counts(self.tp, self.n_pred, self.n_true, "macro"),
            "cross_entropy": ce,
            "perplexity": math.exp(ce),
            "masked_tokens": self.count,
        }


def masked_token_metrics(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> dict[str, float]:
    """One-batch shortcut of `MaskedTokenMetrics` (shapes (B, L, V), (B, L), (B, L))."""
    m = MaskedTokenMetrics(logits.shape[-1])
    m.update(logits, x0, masked)
    return m.compute()


# ---------------------------------------------------------------- alignment scores


def _for_matrix(seq: str) -> str:
    """Upper-case; every letter outside the 20 canonical amino acids (B, Z, U, O, X, anything else) becomes X,
    as DSM's scorer does (BLOSUM62 has rows for B and Z, but DSM does not use them)."""
    return _NOT_IN_MATRIX.sub("X", seq.upper())


@functools.lru_cache(maxsize=1)
def _blosum62():
    import parasail  # optional dependency, imported where it is used

    return parasail, parasail.blosum62


def nw_score(a: str, b: str, gap: int = ASC_GAP) -> int:
    """Needleman-Wunsch score with BLOSUM62 and a linear gap of `gap` per residue (end gaps penalised)."""
    parasail, matrix = _blosum62()
    if not a or not b:
        return -gap * (len(a) + len(b))
    a, b = _for_matrix(a), _for_matrix(b)
    # parasail charges open + (k - 1) * extend for k gap residues: open == extend makes the gap linear.
    # The scan kernel, not the striped one: parasail 1.3.4's striped NW returns wrong scores when
    # open == extend (about a third of random pairs; tests/test_protein_metrics.py checks against Biopython).
    r = parasail.nw_scan_sat(a, b, gap, gap, matrix)
    if r.saturated:
        r = parasail.nw_scan_32(a, b, gap, gap, matrix)
    return int(r.score)


def alignment_score(reference: str, prediction: str, gap: int = ASC_GAP) -> float:
    """DSM's ASc = L / (S(a,a) - S(a,b) + L): 1 for a perfect prediction, towards 0 as it degrades."""
    if not reference:
        raise ValueError("empty reference sequence")
    length = max(len(reference), len(prediction))
    return length / (nw_score(reference, reference, gap) - nw_score(reference, prediction, gap) + length)


def mean_alignment_score(references: Sequence[str], predictions: Sequence[str], gap: int = ASC_GAP) -> float:
    """Mean ASc over (reference, prediction) pairs, as DSM reports it."""
    if len(references) != len(predictions) or not references:
        raise ValueError(
            f"need equal, non-zero numbers of references and predictions, got {len(references)}, {len(predictions)}"
        )
    return float(np.mean([alignment_score(r, p, gap) for r, p in zip(references, predictions, strict=True)]))


def identity(a: str, b: str) -> float:
    """Identical aligned positions / length of the shorter sequence (semi-global, BLOSUM62, gaps 11/1)."""
    parasail, matrix = _blosum62()
    if not a or not b:
        return 0.0
    a, b = _for_matrix(a), _for_matrix(b)
    # a canonical order makes the measure symmetric (tie-breaking in the traceback depends on order);
    # the longer sequence as query is also the faster layout for the striped kernel
    query, db = (a, b) if (len(a), a) >= (len(b), b) else (b, a)
    r = parasail.sg_stats_striped_16(query, db, IDENTITY_GAP_OPEN, IDENTITY_GAP_EXTEND, matrix)
    if r.saturated:
        r = parasail.sg_stats_striped_32(query, db, IDENTITY_GAP_OPEN, IDENTITY_GAP_EXTEND, matrix)
    return r.matches / len(db)


def max_identity_to(queries: Sequence[str], references: Sequence[str], progress: str | None = None) -> np.ndarray:
    """(len(queries),) maximum identity of each query to any reference (exhaustive, O(n m) alignments);
    `progress` is the label of a progress bar over the queries (None: none)."""
    from tqdm.auto import tqdm

    out = np.zeros(len(queries))
    bar = tqdm(queries, desc=progress, unit="seq", disable=progress is None, leave=False)
    for i, q in enumerate(bar):
        out[i] = max((identity(q, r) for r in references), default=0.0)
    return out


def diversity(
    sequences: Sequence[str], rng: np.random.Generator | None = None, max_pairs: int = 2000
) -> dict[str, float]:
    """Mean pairwise identity within a generated set (lower = more diverse).

    All pairs when there are at most `max_pairs`; otherwise `max_pairs` distinct pairs drawn with `rng`
    (required then).
    """
    n = len(sequences)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 sequences, got {n}")
    total = n * (n - 1) // 2
    if total <= max_pairs:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    else:
        if rng is None:
            raise ValueError(f"{total} pairs exceed max_pairs={max_pairs}: pass rng to subsample them")
        flat = rng.choice(total, size=max_pairs, replace=False)
        pairs = [_unrank_pair(int(k), n) for k in np.sort(flat)]
    ids = np.array([identity(sequences[i], sequences[j]) for i, j in pairs])
    return {"mean_pairwise_identity": float(ids.mean()), "pairs": len(pairs)}


def _unrank_pair(k: int, n: int) -> tuple[int, int]:
    """The k-th pair (i < j) in row-major order of the upper triangle of an n x n matrix."""
    i = int(n - 2 - math.floor(math.sqrt(-8 * k + 4 * n * (n - 1) - 7) / 2 - 0.5))
    j = k + i + 1 - n * (n - 1) // 2 + (n - i) * (n - i - 1) // 2
    return i, j


def novelty(
    generated: Sequence[str],
    training: Sequence[str],
    rng: np.random.Generator | None = None,
    max_reference: int | None = None,
    threshold: float = 0.9,
) -> dict[str, float]:
    """Max identity of each generated sequence to the training set, summarised (lower = more novel).

    Args:
        max_reference: compare against at most this many training sequences, drawn with `rng`.
        threshold: also report the fraction of generated sequences at or above this identity.
    """
    if not generated or not training:
        raise ValueError("novelty needs generated and training sequences")
    ref = list(training)
    if max_reference is not None and len(ref) > max_reference:
        if rng is None:
            raise ValueError(f"{len(ref)} training sequences exceed max_reference: pass rng to subsample them")
        ref = [ref[i] for i in np.sort(rng.choice(len(ref), size=max_reference, replace=False))]
    best = max_identity_to(generated, ref)
    return {
        "mean_max_identity": float(best.mean()),
        "median_max_identity": float(np.median(best)),
        "max_identity": float(best.max()),
        f"fraction_at_least_{threshold:g}": float((best >= threshold).mean()),
        "references": len(ref),
    }


# ---------------------------------------------------------------- composition


def kmer_counts(sequences: Sequence[str], k: int) -> Counter:
    """k-mer counts over a set, skipping k-mers with a letter outside the 20 standard amino acids."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    counts: Counter = Counter()
    for s in sequences:
        s = s.upper()
        for i in range(len(s) - k + 1):
            kmer = s[i : i + k]
            if all(c in STANDARD for c in kmer):
                counts[kmer] += 1
    return counts


def kmer_js_divergence(generated: Sequence[str], natural: Sequence[str], k: int = 1, pseudocount: float = 0.0) -> float:
    """Jensen-Shannon divergence (log base 2, in [0, 1]) of the k-mer frequencies of two sequence sets."""
    cg, cn = kmer_counts(generated, k), kmer_counts(natural, k)
    keys = sorted(set(cg) | set(cn))
    if not keys or not sum(cg.values()) or not sum(cn.values()):
        raise ValueError(f"both sets need at least one {k}-mer of standard amino acids")
    p = np.array([cg[x] for x in keys], dtype=np.float64) + pseudocount
    q = np.array([cn[x] for x in keys], dtype=np.float64) + pseudocount
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    return float(max(0.0, 0.5 * _kl2(p, m) + 0.5 * _kl2(q, m)))


def _kl2(p: np.ndarray, m: np.ndarray) -> float:
    nz = p > 0  # 0 log 0 = 0; m > 0 wherever p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / m[nz])))


def kmer_js_divergences(generated: Sequence[str], natural: Sequence[str], ks: Sequence[int] = (1, 2, 3)) -> dict:
    """``{"js_1mer": ..., "js_2mer": ..., "js_3mer": ...}``."""
    return {f"js_{k}mer": kmer_js_divergence(generated, natural, k) for k in ks}


def low_complexity_fraction(sequences: Sequence[str], window: int = 12, max_entropy: float = 2.2) -> float:
    """Fraction of residues lying in some `window`-residue window of Shannon entropy < `max_entropy` bits."""
    flagged = total = 0
    for s in sequences:
        total += len(s)
        if len(s) < window:
            continue
        codes = np.frombuffer(s.upper().encode(), dtype=np.uint8)
        onehot = np.zeros((len(s), 256), dtype=np.int32)
        onehot[np.arange(len(s)), codes] = 1
        csum = np.concatenate([np.zeros((1, 256), np.int32), np.cumsum(onehot, axis=0)])
        counts = (csum[window:] - csum[:-window]).astype(np.float64)  # (len - window + 1, 256) per window
        p = counts / window
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)  # (n_windows,)
        low = ent < max_entropy
        if low.any():
            # a residue is covered when any window starting in [pos - window + 1, pos] is low
            starts = np.concatenate([[0], np.cumsum(low)])
            pos = np.arange(len(s))
            lo, hi = np.clip(pos - window + 1, 0, len(low)), np.clip(pos + 1, 0, len(low))
            flagged += int(((starts[hi] - starts[lo]) > 0).sum())
    if total == 0:
        raise ValueError("no residues to score")
    return flagged / total
