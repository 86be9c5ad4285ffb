"""Two torch jobs on one small machine: why they slow each other far more than sharing the cores explains.

Each job is the README's training step (digits_reverse, llada_tiny, batch 64) in a fresh process: it times
`--steps` forward + backward + AdamW steps after two warm-up steps. The table gives the median step time
of one job alone and of two jobs started together, for each setting:

* ``threads=N``: torch.set_num_threads(N) in each job, OpenMP's default wait policy (threads that
  finish a parallel region spin for a while before sleeping, to catch the next region early);
* ``threads=N passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once), which
  must be in the environment before torch loads its OpenMP runtime;
* ``threads=N spin=K``: ``GOMP_SPINCOUNT=K``, libgomp's spin budget before a waiting thread sleeps (its
  default spins up to 300,000 iterations; 0 is passive).

With two jobs of two threads each on two cores, a spinning thread holds a core its neighbour's working
thread needs; the slowdown over "alone" shows how much of it is spin and how much is the fair 2x.

    python benchmarks/concurrent_jobs.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

JOB = r"""
import json, sys, time, torch
from multimodal.train.config import load_experiment
from multimodal.train.build import build_run
torch.set_num_threads(int(sys.argv[1]))
steps = int(sys.argv[2])
run = build_run(load_experiment("digits_reverse", ["task.train_size=256"]))
task, tok, model = run.task, run.tokenizer, run.model
layouts = [task.layout(x) for x in task.examples("train")[:64]]
batch = task.collate(layouts, tok)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
gen = torch.Generator().manual_seed(0)
times = []
for i in range(steps + 2):
    t0 = time.perf_counter()
    xt = batch.input_ids.clone()
    masked = batch.maskable & (torch.rand(xt.shape, generator=gen) < 0.5)
    xt[masked] = tok.mask_id
    logits = model(xt, attention_mask=batch.attention_mask).logits
    loss = torch.nn.functional.cross_entropy(logits[masked], batch.input_ids[masked])
    loss.backward()
    opt.step()
    opt.zero_grad()
    if i >= 2:
        times.append(time.perf_counter() - t0)
print(json.dumps({"threads": torch.get_num_threads(), "times": times}))
"""


def run_jobs(n_jobs: int, threads: int, steps: int, env_extra: dict[str, str]) -> list[float]:
    """Median step time (s) of each of `n_jobs` jobs started together."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_NUM_THREADS=str(threads), **env_extra)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, str(threads), str(steps)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(n_jobs)
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a job failed with exit code {p.returncode}")
        out.append(statistics.median(json.loads(stdout.strip().splitlines()[-1])["times"]))
    return out


SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin=10000": {"GOMP_SPINCOUNT": "10000"},
    "spin=1000": {"GOMP_SPINCOUNT": "1000"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    print(f"CPUs this process may use: {len(os.sched_getaffinity(0))}")
    print("| setting | alone (s/step) | two jobs together (s/step, each) | slowdown |")
    print("|---|---|---|---|")
    for threads in args.threads:
        for label, extra in SETTINGS.items():
            if threads == 1 and label != "default":
                continue  # one thread never waits for another
            start = time.perf_counter()
            alone = run_jobs(1, threads, args.steps, extra)[0]
            both = run_jobs(2, threads, args.steps, extra)
            shown = " / ".join(f"{t:.3f}" for t in both)
            took = time.perf_counter() - start
            print(f"| threads={threads} {label} | {alone:.3f} | {shown} | {max(both) / alone:.1f}x |  ({took:.0f} s)")


if __name__ == "__main__":
    main()
