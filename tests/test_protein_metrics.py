"""Golden values for the DSM protein metrics: ASc, identity, k-mer JS, F1, cross-entropy, diversity, SEG."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("parasail")

from tasks.protein_metrics import (  # noqa: E402
    MaskedTokenMetrics,
    alignment_score,
    diversity,
    identity,
    kmer_js_divergence,
    kmer_js_divergences,
    low_complexity_fraction,
    masked_f1,
    masked_token_metrics,
    mean_alignment_score,
    novelty,
    nw_score,
)

AA = "ACDEFGHIKLMNPQRSTVWY"


def test_nw_score_is_blosum62_with_linear_gap_ten():
    assert nw_score("MKV", "MKV") == 5 + 5 + 4
    assert nw_score("WAAW", "WW") == 11 + 11 - 2 * 10  # one two-residue gap costs 20, not open + extend
    assert nw_score("MKV", "MRV") == 5 + 2 + 4


def test_asc_hand_computed():
    # S(a,a) = 14; best MKV / M-V = 5 - 10 + 4 = -1; L = 3  ->  3 / (14 + 1 + 3)
    assert alignment_score("MKV", "MV") == pytest.approx(3 / 18)
    assert alignment_score("MKV", "MRV") == pytest.approx(3 / (14 - 11 + 3))
    assert alignment_score("MKVLAG", "MKVLAG") == 1.0
    assert mean_alignment_score(["MKV", "MKV"], ["MV", "MKV"]) == pytest.approx((3 / 18 + 1) / 2)
    # every letter outside the 20 canonical ones is scored as X (DSM's scorer), B and Z included
    assert nw_score("MUK", "MXK") == nw_score("MXK", "MXK")
    assert nw_score("MBKZ", "MDKE") == nw_score("MXKX", "MDKE") != 5 + 4 + 5 + 4  # BLOSUM62's own B/D, Z/E rows
    assert alignment_score("ABCZW", "ADCEW") == alignment_score("AXCXW", "ADCEW")


def test_nw_score_matches_biopython():
    align = pytest.importorskip("Bio.Align")
    aligner = align.PairwiseAligner(mode="global", substitution_matrix=align.substitution_matrices.load("BLOSUM62"))
    aligner.open_gap_score = aligner.extend_gap_score = -10
    rng = np.random.default_rng(0)
    for _ in range(20):  # up to 300 residues: both the 8-bit and the 16-bit kernels are exercised
        a = "".join(rng.choice(list(AA), rng.integers(5, 300)))
        b = "".join(rng.choice(list(AA), rng.integers(5, 300)))
        assert nw_score(a, b) == aligner.score(a, b)
        assert nw_score(a, a) == aligner.score(a, a)


def test_identity_definition():
    assert identity("MKTAYIAK", "MKTAYIAK") == 1.0
    assert identity("ACDEFGHIKL", "ACDEFGHIKW") == pytest.approx(0.9)
    fragment, whole = "KTAYIAKQRQ", "MKTAYIAKQRQISFVKSHFSRQ"
    assert identity(fragment, whole) == identity(whole, fragment) == 1.0  # shorter-length normalisation
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = "".join(rng.choice(list(AA), rng.integers(20, 80)))
        b = "".join(rng.choice(list(AA), rng.integers(20, 80)))
        assert identity(a, b) == identity(b, a)
    assert identity("", "MKV") == 0.0


def test_js_divergence_golden_values():
    natural = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY"]
    for k in (1, 2, 3):
        assert kmer_js_divergence(natural, natural, k) == 0.0
        assert kmer_js_divergence(["AAAAAA"], ["CCCCCC"], k) == pytest.approx(1.0)  # base 2: disjoint = 1
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4)
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * math.log2(2))
    assert kmer_js_divergence(["AA"], ["AC"], 1) == pytest.approx(expected)
    # k-mers holding a non-standard letter are skipped, as in DSM
    assert kmer_js_divergence(["AXC"], ["AC"], 1) == pytest.approx(0.0)
    assert set(kmer_js_divergences(natural, ["MKV"])) == {"js_1mer", "js_2mer", "js_3mer"}
    assert kmer_js_divergence(["AA"], ["AC"], 1, pseudocount=1e-9) == pytest.approx(expected, rel=1e-6)


def test_f1_small_example():
    target = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    # class 0: P = R = 1/2 -> 0.5; class 1: P = 2/3, R = 1 -> 0.8; class 2: 0. Weights 2, 2, 1.
    assert masked_f1(pred, target, 5) == pytest.approx((2 * 0.5 + 2 * 0.8 + 0) / 5)
    assert masked_f1(pred, target, 5, average="macro") == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert masked_f1(pred, target, 5, average="micro") == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="average"):
        masked_f1(pred, target, 5, average="samples")


def test_masked_token_metrics_cross_entropy_and_perplexity():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 7, generator=g)
    x0 = torch.randint(0, 7, (2, 6), generator=g)
    masked = torch.rand(2, 6, generator=g) < 0.5
    masked[0, 0] = True
    out = masked_token_metrics(logits, x0, masked)
    ce = torch.nn.functional.cross_entropy(logits[masked].double(), x0[masked])
    assert out["cross_entropy"] == pytest.approx(float(ce))
    assert out["perplexity"] == pytest.approx(math.exp(out["cross_entropy"]))
    assert out["accuracy"] == pytest.approx(float((logits.argmax(-1) == x0)[masked].float().mean()))
    assert out["masked_tokens"] == int(masked.sum())
    # log-probabilities give the same numbers; unmasked positions never count
    assert masked_token_metrics(torch.log_softmax(logits, -1), x0, masked) == pytest.approx(out)
    changed = logits.clone()
    changed[~masked] = 100.0
    assert masked_token_metrics(changed, x0, masked) == pytest.approx(out)
    # accumulating row by row equals one pass over the batch
    acc = MaskedTokenMetrics(7)
    for b in range(2):
        acc.update(logits[b : b + 1], x0[b : b + 1], masked[b : b + 1])
    assert acc.compute() == pytest.approx(out)
    with pytest.raises(ValueError, match="logits"):
        acc.update(logits, x0[:, :3], masked)


def test_diversity_and_novelty():
    same = ["MKTAYIAKQRQ"] * 4
    assert diversity(same)["mean_pairwise_identity"] == 1.0
    rng = np.random.default_rng(0)
    many = ["".join(rng.choice(list(AA), 40)) for _ in range(30)]
    with pytest.raises(ValueError, match="rng"):
        diversity(many, max_pairs=50)
    d1 = diversity(many, np.random.default_rng(5), max_pairs=50)
    assert d1 == diversity(many, np.random.default_rng(5), max_pairs=50) and d1["pairs"] == 50
    assert d1["mean_pairwise_identity"] < 0.5
    nov = novelty(many[:3], many)
    assert nov["max_identity"] == 1.0 and nov["fraction_at_least_0.9"] == 1.0
    sub = novelty(many[:3], many, np.random.default_rng(0), max_reference=5)
    assert sub["references"] == 5


def _low_complexity_brute(seqs, window=12, max_entropy=2.2):
    flagged = total = 0
    for s in seqs:
        total += len(s)
        covered = set()
        for i in range(len(s) - window + 1):
            counts = Counter(s[i : i + window])
            h = -sum(c / window * math.log2(c / window) for c in counts.values())
            if h < max_entropy:
                covered.update(range(i, i + window))
        flagged += len(covered)
    return flagged / total


def test_low_complexity_fraction():
    assert low_complexity_fraction(["A" * 30]) == 1.0
    assert low_complexity_fraction([AA * 3]) == 0.0
    rng = np.random.default_rng(0)
    seqs = [AA[:3] * 5 + "".join(rng.choice(list(AA), 40)) + "Q" * 9, "MKV", "".join(rng.choice(list("AKE"), 50))]
    assert low_complexity_fraction(seqs) == pytest.approx(_low_complexity_brute(seqs))
