"""Training step time of each backbone family on the digit-reversal batches (CPU), steps interleaved.

One process builds each setting from its experiment config (build_run, the same seed) and trains it
on the same stream of `--batch` digit-reversal rows (configs/experiment/digits_reverse*.yaml: dense
`llada_tiny`; `llada_tiny_moe`, routed experts with the router losses; `dream_tiny`, Qwen2 layout with
the logit shift; block diffusion on `llada_tiny`, [x_t ; x_0] rows of twice the length). The settings'
steps alternate (dense, MoE, Dream, block, dense, ...), so all see the same background load on a
shared machine. A step is diffusion_loss + backward + grad clip + AdamW on a collated batch, timed after
`--warmup` untimed steps; the table gives the median step, its ratio to the dense one, and the
parameter counts (all, and those one token runs through).

    python benchmarks/families.py --threads 2 --steps 30
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from multimodal.diffusion.objective import diffusion_loss
from multimodal.train.build import build_run
from multimodal.train.config import load_experiment
from multimodal.train.module import mask_seed

SETTINGS = {
    "dense llada_tiny": ("digits_reverse", []),
    "MoE llada_tiny_moe": ("digits_reverse_moe", []),
    "Dream dream_tiny": ("digits_reverse", ["backbone.preset=dream_tiny"]),
    "block diffusion (4)": ("digits_reverse_block", []),
}


class Trainer:
    """One setting's model, AdamW and batch stream; `step` returns one optimiser step's seconds."""

    def __init__(self, name: str, overrides: list[str], batch: int):
        self.config = load_experiment(name, [*overrides, f"train.batch_size={batch}", "backbone.vocab_size=16"])
        self.run = build_run(self.config)
        self.model = self.run.model.train()
        self.schedule = self.config.diffusion.build_schedule()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.train.lr)
        loader = torch.utils.data.DataLoader(
            self.run.task.train_layouts(),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            collate_fn=functools.partial(self.run.task.collate, tokenizer=self.run.tokenizer),
            generator=torch.Generator().manual_seed(self.config.seed),  # the same rows for every setting
        )
        self.stream = iter(loader)
        self.times: list[float] = []

    def step(self, index: int) -> float:
        tok, cfg = self.run.tokenizer, self.config
        data = next(self.stream)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(mask_seed(cfg.seed, index, 0))
        out = diffusion_loss(self.model, data, cfg.diffusion, self.schedule, tok.mask_id, generator, eos_id=tok.eos_id)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed optimiser steps per setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trainers = {name: Trainer(cfg, extra, args.batch) for name, (cfg, extra) in SETTINGS.items()}
    for i in range(args.warmup + args.steps):
        for t in trainers.values():
            seconds = t.step(i)
            if i >= args.warmup:
                t.times.append(seconds)
    print(f"CPU, {args.threads} thread(s), digit reversal, batch {args.batch}, median of {args.steps} steps")
    print("| setting | parameters | active per token | ms / step | vs dense |")
    print("|---|---|---|---|---|")
    dense = statistics.median(next(iter(trainers.values())).times)
    for name, t in trainers.items():
        c = t.model.config
        total = c.num_parameters()
        active = c.active_parameters() if hasattr(c, "active_parameters") else total
        ms = statistics.median(t.times)
        print(f"| {name} | {total / 1e6:.2f}M | {active / 1e6:.2f}M | {ms * 1e3:.0f} | {ms / dense:.2f}x |")


if __name__ == "__main__":
    main()
