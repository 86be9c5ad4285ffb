"""Training throughput with and without sequence packing, on the embedded data of real tasks (CPU).

For each task, one process builds the same model twice (build_run: same seed, same initial weights)
and trains both copies on the same stream of batches of `--batch` documents (one seeded shuffle):
one unpacked (the task's padded collate, one document per row), one packed (multimodal/train/packing.py:
the same documents in rows of `--pack-length` with block-diagonal attention). Their steps alternate
(unpacked, packed, unpacked, ...), so both see the same background load on a shared machine. A step
is collate + diffusion_loss + backward + grad clip + AdamW, timed after `--warmup` untimed steps.
Real tokens are the documents' own tokens (batch.num_tokens); the padding fraction is the share of
row slots that hold none.

Tasks: ``digits`` (configs/experiment/digits_reverse.yaml: 5-13 token prompts and the 16-token answer
canvas, so little padding to remove) and ``protein`` (configs/experiment/protein_dsm.yaml's embedded
proteome, 32-256 residues, its LLaDA objective and normalisation, but the ``llada_tiny`` backbone:
DSM mode's ESM2 body takes only (B, L) padding masks, so it cannot run packed rows).

    python benchmarks/packing.py --threads 1 --steps 20
    python benchmarks/packing.py --tasks protein --pack-length 512 --steps 50
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass

import torch

from multimodal.diffusion.objective import diffusion_loss
from multimodal.train.build import build_run
from multimodal.train.config import load_experiment
from multimodal.train.module import mask_seed
from multimodal.train.packing import PackedCollate

# task -> (experiment config, overrides, default pack length, default documents per step). Packed rows
# may be longer than the config's context: max_seq_len only bounds the row length, the weights are the same.
TASKS = {
    "digits": ("digits_reverse", ["backbone.max_seq_len=256"], 64, 64),
    "protein": ("protein_dsm", ["dsm=null", "backbone.preset=llada_tiny", "backbone.max_seq_len=1024"], 258, 16),
}


@dataclass
class Result:
    """Totals over the timed steps of one setting."""

    setting: str
    steps: int = 0
    documents: int = 0
    rows: int = 0
    slots: int = 0
    real: int = 0
    seconds: float = 0.0
    collate_seconds: float = 0.0
    loss_sum: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.real / self.seconds

    @property
    def padding(self) -> float:
        return 1.0 - self.real / self.slots


class Trainer:
    """One model, its AdamW and its batch stream; `step` runs and times one optimiser step."""

    def __init__(self, task: str, batch: int, pack_length: int | None):
        name, overrides, _, _ = TASKS[task]
        self.config = load_experiment(name, [*overrides, f"train.batch_size={batch}"])
        self.run = build_run(self.config)
        self.model = self.run.model.train()
        self.schedule = self.config.diffusion.build_schedule()
        train = self.config.train
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        collate = functools.partial(self.run.task.collate, tokenizer=self.run.tokenizer)
        if pack_length:
            collate = PackedCollate(collate, pack_length, self.run.tokenizer.pad_id)
        loader = torch.utils.data.DataLoader(
            self.run.task.train_layouts(),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.config.seed),  # the same document stream in both
        )
        self.stream = iter(loader)
        self.result = Result(f"{task} packed (L={pack_length})" if pack_length else f"{task} unpacked (padded)")

    def step(self, index: int, timed: bool) -> None:
        tok, cfg = self.run.tokenizer, self.config
        start = time.perf_counter()
        data = next(self.stream)
        collated = time.perf_counter() - start
        generator = torch.Generator().manual_seed(mask_seed(cfg.seed, index, 0))
        out = diffusion_loss(self.model, data, cfg.diffusion, self.schedule, tok.mask_id, generator, eos_id=tok.eos_id)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        elapsed = time.perf_counter() - start
        if not timed:
            return
        r = self.result
        r.steps += 1
        r.seconds += elapsed
        r.collate_seconds += collated
        r.documents += len(data.meta)
        r.rows += data.input_ids.shape[0]
        r.slots += data.input_ids.numel()
        r.real += data.num_tokens
        r.loss_sum += float(out.loss.detach())


def compare(task: str, steps: int, warmup: int, batch: int, pack_length: int) -> tuple[Result, Result]:
    """Unpacked and packed training of the same model on the same documents, steps interleaved."""
    unpacked, packed = Trainer(task, batch, None), Trainer(task, batch, pack_length)
    for i in range(warmup + steps):
        unpacked.step(i, timed=i >= warmup)
        packed.step(i, timed=i >= warmup)
    return unpacked.result, packed.result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="digits,protein", help="comma-separated: digits, protein")
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=None, help="documents per step (default: digits 64, protein 16)")
    p.add_argument("--pack-length", type=int, default=None, help="packed row length (default: digits 64, protein 258)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[tuple[Result, float]] = []
    for task in args.tasks.split(","):
        _, _, default_pack, default_batch = TASKS[task]
        unpacked, packed = compare(
            task, args.steps, args.warmup, args.batch or default_batch, args.pack_length or default_pack
        )
        rows += [(unpacked, 1.0), (packed, packed.tokens_per_second / unpacked.tokens_per_second)]
    print(f"CPU, {args.threads} thread(s), llada_tiny, {args.steps} timed steps after {args.warmup} warm-up steps")
    head = ("setting", "docs/step", "rows x L", "padding", "steps", "seconds", "collate s", "real tok/s", "vs unpacked")
    print(
        f"| {head[0]:<26} | {head[1]:>9} | {head[2]:>10} | {head[3]:>7} | {head[4]:>5} | {head[5]:>7} "
        f"| {head[6]:>9} | {head[7]:>10} | {head[8]:>11} | {'loss':>6} |"
    )
    print("|" + "|".join("-" * (w + 2) for w in (26, 9, 10, 7, 5, 7, 9, 10, 11, 6)) + "|")
    for r, ratio in rows:
        shape = f"{r.rows / r.steps:.1f} x {r.slots / r.rows:.0f}"
        print(
            f"| {r.setting:<26} | {r.documents / r.steps:>9.1f} | {shape:>10} | {r.padding:>7.1%} "
            f"| {r.steps:>5} | {r.seconds:>7.2f} | {r.collate_seconds:>9.2f} | {r.tokens_per_second:>10.0f} "
            f"| {ratio:>10.2f}x | {r.loss_sum / r.steps:>6.3f} |"
        )


if __name__ == "__main__":
    main()
