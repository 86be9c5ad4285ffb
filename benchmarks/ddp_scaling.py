"""Data-parallel scaling on the CPU: one process vs two DDP processes (gloo) on the same global batch.

Trains the embedded digit task (`llada_tiny`) for `--steps` optimiser steps of `--batch` sequences:
once in one process with one thread, once in one process with two threads, and once as two
ddp_spawn processes with one thread each and half the batch each. Prints wall time of training
(Lightning's fit, process start-up included for ddp_spawn) and sequences per second.

    python benchmarks/ddp_scaling.py --steps 300 --batch 64
"""

from __future__ import annotations

import argparse
import tempfile
import time

from multimodal.train.config import load_experiment
from multimodal.train.run import train


def timed(steps: int, batch: int, threads: int, devices: int, out: str) -> float:
    sets = [
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        f"train.batch_size={batch // devices}",
        f"train.threads={threads}",
        "train.eval_every=0",
        "train.log_every=50",
        "train.accelerator=cpu",
    ]
    if devices > 1:
        sets += ["train.strategy=ddp_spawn", f"train.devices={devices}"]
    config = load_experiment("digits_reverse", sets)
    start = time.perf_counter()
    train(config)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    rows = []
    for label, threads, devices in (
        ("1 process x 1 thread", 1, 1),
        ("1 process x 2 threads", 2, 1),
        ("2 DDP processes x 1 thread", 1, 2),
    ):
        with tempfile.TemporaryDirectory() as out:
            rows.append((label, timed(args.steps, args.batch, threads, devices, out)))
    base = rows[0][1]
    print(f"digits_reverse, llada_tiny, {args.steps} steps x global batch {args.batch}, CPU")
    print(f"| {'setting':<28} | {'seconds':>8} | {'seq/s':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for label, seconds in rows:
        rate = args.steps * args.batch / seconds
        print(f"| {label:<28} | {seconds:>8.1f} | {rate:>8.1f} | {base / seconds:>7.2f}x |")


if __name__ == "__main__":
    main()
