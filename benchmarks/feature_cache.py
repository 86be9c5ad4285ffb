"""Training step time with a frozen tower, with and without `train.cache_features`, in one run.

    python benchmarks/feature_cache.py --steps 200 --threads 2

Each row trains the given experiment for `--steps` steps (no evaluation, no checkpoints kept) and reports
the mean seconds per step over the second half of the run, where the cache is warm only if the first
half already saw every item: use at least one epoch's worth of steps (the shapes QA split is 625 steps of
64, its caption split 157) for the warm figure. Defaults: the README's LLaDA-V stages with the tower frozen
(stage 1 as it is, stage 2 with `train.trainable=[projector, backbone]`), after `mmdiff pretrain-tower
--config shapes_vqa_tower` and stage 1 have written their runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROWS = {
    "stage 1 (projector)": ("shapes_vqa_stage1", []),
    "stage 2, tower frozen (projector + backbone)": ("shapes_vqa_stage2", ["train.trainable=[projector,backbone]"]),
}


def step_time(config: str, sets: list[str], steps: int, threads: int, cache: bool) -> float:
    from multimodal.train.config import load_experiment
    from multimodal.train.run import train

    with tempfile.TemporaryDirectory() as out:
        overrides = [
            *sets,
            f"train.output_dir={out}",
            f"train.max_steps={steps}",
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
    times = [r["step_s"] for r in rows if "step_s" in r and r["step"] > steps // 2]
    return sum(times) / len(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(f"| stage | steps | s/step uncached | s/step cached | speed-up |  ({args.threads} threads)")
    print("|---|---|---|---|---|")
    for label, (config, sets) in ROWS.items():
        plain = step_time(config, sets, args.steps, args.threads, cache=False)
        cached = step_time(config, sets, args.steps, args.threads, cache=True)
        print(f"| {label} | {args.steps} | {plain:.3f} | {cached:.3f} | {plain / cached:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
