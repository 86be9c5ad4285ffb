"""DSM against a masked-LM baseline across training seeds: mask-filling accuracy per rate, as a table.

Reads the `eval/test_metrics.json` that `mmdiff train` / `mmdiff eval` wrote for each run (evaluate all
runs with the same eval seed, so every model sees the same masks) and prints, per mask rate, each
seed's accuracy, the mean and standard deviation over seeds, and the mean difference DSM - baseline
with its standard error over seeds. A difference counts as a win only when it exceeds about twice
that standard error.

    python benchmarks/dsm_vs_mlm.py --dsm runs/s0/protein_dsm runs/s1/protein_dsm \\
        --baseline runs/s0/protein_mlm runs/s1/protein_mlm
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def accuracies(run: Path, split: str) -> dict[str, float]:
    path = run / "eval" / f"{split}_metrics.json"
    if not path.is_file():
        raise SystemExit(f"no evaluation at {path}: run `mmdiff eval --run {run}` first")
    filling = json.loads(path.read_text())["mask_filling"]
    return {rate: m["accuracy"] for rate, m in filling.items()}


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsm", nargs="+", type=Path, required=True, help="DSM run folders, one per seed")
    parser.add_argument("--baseline", nargs="+", type=Path, required=True, help="baseline run folders, one per seed")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    dsm = [accuracies(r, args.split) for r in args.dsm]
    base = [accuracies(r, args.split) for r in args.baseline]
    paired = len(dsm) == len(base)
    print("| rate | DSM per seed (%) | baseline per seed (%) | DSM mean +- sd | baseline mean +- sd | DSM - baseline |")
    print("|---|---|---|---|---|---|")
    for rate in dsm[0]:
        d = [100 * a[rate] for a in dsm]
        b = [100 * a[rate] for a in base]
        if paired:  # seed i of DSM against seed i of the baseline
            diffs = [x - y for x, y in zip(d, b, strict=True)]
            se = spread(diffs) / len(diffs) ** 0.5
            gap = f"{statistics.mean(diffs):+.2f} +- {se:.2f} (se)"
        else:
            gap = f"{statistics.mean(d) - statistics.mean(b):+.2f}"
        print(
            f"| {rate} | {' / '.join(f'{x:.2f}' for x in d)} | {' / '.join(f'{x:.2f}' for x in b)} "
            f"| {statistics.mean(d):.2f} +- {spread(d):.2f} | {statistics.mean(b):.2f} +- {spread(b):.2f} | {gap} |"
        )


if __name__ == "__main__":
    main()
