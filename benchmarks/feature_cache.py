"""Training step time with a frozen tower, with and without `train.cache_features`, in one run.

    python benchmarks/feature_cache.py --steps 100 --threads 2

Each row trains an experiment (no evaluation, no checkpoints kept) and reports the mean seconds per step
over `--steps` steps: uncached, the last half of `--steps` steps; cached, the `--steps` steps after one
epoch (every image then has its features in memory; the first epoch encodes each image once). Rows: the
LLaDA-V stage 1 (projector only) and the QA stage with the tower frozen (`shapes_vqa_qa`'s setting),
and, for reference, the README's stage 2, whose tower trains and so cannot be cached. Run it after
`mmdiff pretrain-tower --config shapes_vqa_tower` and `mmdiff train --config shapes_vqa_stage1`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

# label -> (experiment, overrides, steps in one epoch of its training split at batch 64, cacheable)
ROWS = {
    "stage 1, captions (projector)": ("shapes_vqa_stage1", [], 157, True),
    "QA, tower frozen (projector + backbone)": (
        "shapes_vqa_stage2",
        ["train.trainable=[projector,backbone]"],
        625,
        True,
    ),
    "QA, tower trains (README stage 2)": ("shapes_vqa_stage2", [], 625, False),
}


def step_time(config: str, sets: list[str], steps: int, threads: int, cache: bool, warm: int = 0) -> float:
    """Mean seconds per step over the last `steps` of a run of `warm` + `steps` steps (uncached: `warm` is 0
    and the last half is timed)."""
    from multimodal.train.config import load_experiment
    from multimodal.train.run import train

    with tempfile.TemporaryDirectory() as out:
        overrides = [
            *sets,
            f"train.output_dir={out}",
            f"train.max_steps={warm + steps}",
            f"train.threads={threads}",
            f"train.cache_features={str(cache).lower()}",
            f"train.cache_media={str(cache).lower()}",
            "train.log_every=10",
            "train.eval_every=0",
            "train.eval_at_end=false",
            "train.checkpoint_every=0",
        ]
        run = train(load_experiment(config, overrides))
        rows = [json.loads(x) for x in (Path(run.folder) / "metrics.jsonl").read_text().splitlines()]
    start = warm if warm else steps // 2
    times = [r["step_s"] for r in rows if "step_s" in r and r["step"] > start]
    return sum(times) / len(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(f"| stage | steps | s/step uncached | s/step cached | speed-up |  ({args.threads} threads)")
    print("|---|---|---|---|---|")
    for label, (config, sets, epoch, cacheable) in ROWS.items():
        plain = step_time(config, sets, args.steps, args.threads, cache=False)
        if not cacheable:
            print(f"| {label} | {args.steps} | {plain:.3f} | - | - |", flush=True)
            continue
        cached = step_time(config, sets, args.steps, args.threads, cache=True, warm=epoch + 10)
        print(f"| {label} | {args.steps} | {plain:.3f} | {cached:.3f} | {plain / cached:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
