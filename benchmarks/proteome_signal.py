"""How much a residue's context tells about it in the embedded proteome: count-based ceilings.

Mask-filling accuracy on held-out proteins can only rise above the amino-acid prior as far as the
context carries information that transfers from training to test proteins. This script measures that
with smoothed count models fitted on the training split and scored on the test split (cross-entropy
in nats, perplexity, argmax accuracy): the amino-acid prior, the left neighbour, both neighbours; and,
for the genomic-neighbour pairs, how much the partner's amino-acid composition tells about a binder's
residues (true partner against a shuffled one). Reference points for the trained models in
benchmarks/RESULTS.md: a model that reads only local context cannot beat these by much.

    python benchmarks/proteome_signal.py [--data data/proteome/<digest>]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tasks.protein_io import read_fasta, read_pairs

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
INDEX = {a: i for i, a in enumerate(RESIDUES)}


def standard(seq: str) -> str:
    return "".join(c for c in seq if c in INDEX)


def composition(seqs: list[str], pseudo: float = 0.5) -> np.ndarray:
    counts = np.full(len(RESIDUES), pseudo)
    for s in seqs:
        for c in s:
            counts[INDEX[c]] += 1
    return counts / counts.sum()


def context_model(
    train: list[str], test: list[str], context: Callable[[str, int], object], prior: np.ndarray, alpha: float = 5.0
) -> tuple[float, float]:
    """(cross-entropy, accuracy) on `test` of P(residue | context) counted on `train`, smoothed towards
    `prior` with `alpha` pseudo-counts per residue."""
    counts: dict[object, np.ndarray] = {}
    for s in train:
        for i, c in enumerate(s):
            counts.setdefault(context(s, i), np.zeros(len(RESIDUES)))[INDEX[c]] += 1
    nll, hits, n = 0.0, 0, 0
    empty = np.zeros(len(RESIDUES))
    for s in test:
        for i, c in enumerate(s):
            v = counts.get(context(s, i), empty)
            p = (v + alpha * len(RESIDUES) * prior) / (v.sum() + alpha * len(RESIDUES))
            nll -= math.log(p[INDEX[c]])
            hits += int(p.argmax() == INDEX[c])
            n += 1
    return nll / n, hits / n


def partner_composition(pairs: list[tuple[str, str]], prior: np.ndarray, weight: float, shuffle: bool, seed: int):
    """Cross-entropy of binder residues under (1 - weight) * prior + weight * composition(target)."""
    targets = [t for t, _ in pairs]
    if shuffle:
        targets = [targets[i] for i in np.random.default_rng(seed).permutation(len(targets))]
    nll, n = 0.0, 0
    for target, (_, binder) in zip(targets, pairs, strict=True):
        p = (1 - weight) * prior + weight * composition([target])
        for c in binder:
            nll -= math.log(p[INDEX[c]])
            n += 1
    return nll / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="an embedded proteome folder (default: the only one)")
    args = parser.parse_args(argv)
    folder = args.data
    if folder is None:
        found = sorted(Path("data/proteome").glob("*/manifest.json"))
        if len(found) != 1:
            raise SystemExit(f"give --data: found {len(found)} proteome folders under data/proteome")
        folder = found[0].parent
    train = [standard(r.sequence) for r in read_fasta(folder / "train.fasta")[0]]
    test = [standard(r.sequence) for r in read_fasta(folder / "test.fasta")[0]]
    prior = composition(train)

    def left(s: str, i: int) -> str:  # "^" stands for the sequence start, "$" for its end
        return s[i - 1] if i > 0 else "^"

    def both(s: str, i: int) -> str:
        return left(s, i) + (s[i + 1] if i + 1 < len(s) else "$")

    print(f"data: {folder} ({len(train)} train, {len(test)} test proteins)")
    print("| model (counted on train, scored on test) | cross-entropy (nats) | perplexity | accuracy (%) |")
    print("|---|---|---|---|")
    for name, ctx in (("amino-acid prior", lambda s, i: 0), ("left neighbour", left), ("both neighbours", both)):
        ce, acc = context_model(train, test, ctx, prior)
        print(f"| {name} | {ce:.4f} | {math.exp(ce):.2f} | {100 * acc:.2f} |")
    pairs = {}
    for split in ("train", "test"):
        rows = read_pairs(folder / f"{split}_pairs.tsv")[0]
        pairs[split] = [(standard(p.seq_a), standard(p.seq_b)) for p in rows if p.label == 1]
    print()
    print(f"binders of {len(pairs['test'])} test neighbour pairs: residue cross-entropy (nats) under")
    print("| prior + weight x partner composition | weight | true partner | shuffled partner |")
    print("|---|---|---|---|")
    for weight in (0.2, 0.4):
        true = partner_composition(pairs["test"], prior, weight, shuffle=False, seed=0)
        shuffled = partner_composition(pairs["test"], prior, weight, shuffle=True, seed=0)
        print(f"| mixture | {weight} | {true:.4f} | {shuffled:.4f} |")


if __name__ == "__main__":
    main()
