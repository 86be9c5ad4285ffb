"""DSM against a masked-LM baseline across training seeds: mask-filling accuracy per rate, as a table.

Reads the `eval/test_metrics.json` that `mmdiff train` / `mmdiff eval` wrote for each run (evaluate all
runs with the same eval seed, so every model sees the same masks) and prints, per mask rate, each
seed's accuracy, the mean and standard deviation over seeds, and the mean difference DSM - baseline
with its standard error over seeds. A difference counts as a win only when it exceeds about twice
that standard error. `--metric perplexity` tabulates masked-position perplexity instead (lower is
better, so there a negative difference favours DSM).

    python benchmarks/dsm_vs_mlm.py --dsm runs/s0/protein_dsm runs/s1/protein_dsm \\
        --baseline runs/s0/protein_mlm runs/s1/protein_mlm
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def per_rate(run: Path, split: str, metric: str) -> dict[str, float]:
    path = run / "eval" / f"{split}_metrics.json"
    if not path.is_file():
        raise SystemExit(f"no evaluation at {path}: run `mmdiff eval --run {run}` first")
    filling = json.loads(path.read_text())["mask_filling"]
    return {rate: m[metric] for rate, m in filling.items()}


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsm", nargs="+", type=Path, required=True, help="DSM run folders, one per seed")
    parser.add_argument("--baseline", nargs="+", type=Path, required=True, help="baseline run folders, one per seed")
    parser.add_argument("--split", default="test")
    parser.add_argument("--metric", default="accuracy", choices=["accuracy", "perplexity"])
    args = parser.parse_args(argv)
    dsm = [per_rate(r, args.split, args.metric) for r in args.dsm]
    base = [per_rate(r, args.split, args.metric) for r in args.baseline]
    scale, unit = (100, " (%)") if args.metric == "accuracy" else (1, "")
    paired = len(dsm) == len(base)
    head = f"| rate | DSM per seed{unit} | baseline per seed{unit}"
    print(f"{head} | DSM mean +- sd | baseline mean +- sd | DSM - baseline |")
    print("|---|---|---|---|---|---|")
    for rate in dsm[0]:
        d = [scale * a[rate] for a in dsm]
        b = [scale * a[rate] for a in base]
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
