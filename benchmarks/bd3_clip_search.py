"""BD3-LM's clipped noise search: the variance of the block-diffusion training loss per mask-rate interval.

BD3-LM (PAPERS.md section 7) draws each block's mask rate from [beta, omega] and picks the interval
whose training loss estimate varies least. For a trained run with `diffusion.block_size`, this script
draws `--batches` training batches and, for each candidate interval, recomputes the batch loss
`--repeats` times with fresh noise (one t per block, stratified, as in training); the variance across
repeats, averaged over batches, is the figure to minimise. The table also gives the mean loss (the
clipped objective, not the full ELBO); set the chosen interval as `diffusion.clip_low` / `clip_high`.

    python benchmarks/bd3_clip_search.py --run runs/digits_reverse_block
"""

from __future__ import annotations

import argparse
import functools
import statistics
from dataclasses import replace

import torch

from multimodal.diffusion.objective import diffusion_loss
from multimodal.train.build import load_run

INTERVALS = "0.0-1.0,0.1-0.9,0.2-0.8,0.3-0.8,0.45-0.95,0.5-1.0"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--intervals", default=INTERVALS, help="comma-separated low-high mask-rate intervals")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    cfg = run.config
    if not cfg.diffusion.block_size:
        raise SystemExit(f"{args.run} is not a block-diffusion run (diffusion.block_size is not set)")
    model, tok = run.model.eval(), run.tokenizer
    loader = torch.utils.data.DataLoader(
        run.task.train_layouts(),
        batch_size=args.batch,
        shuffle=True,
        collate_fn=functools.partial(run.task.collate, tokenizer=tok),
        generator=torch.Generator().manual_seed(0),
    )
    batches = [b for _, b in zip(range(args.batches), loader, strict=False)]
    print(
        f"{args.run}: block {cfg.diffusion.block_size}, {args.batches} batches x {args.batch}, {args.repeats} repeats"
    )
    print("| mask rates | mean loss | variance across repeats | vs widest |")
    print("|---|---|---|---|")
    rows = []
    for interval in args.intervals.split(","):
        low, high = (float(v) for v in interval.split("-"))
        diffusion = replace(cfg.diffusion, clip_low=low or None, clip_high=high if high < 1 else None)
        schedule = diffusion.build_schedule()
        means, variances = [], []
        with torch.no_grad():
            for i, batch in enumerate(batches):
                losses = [
                    float(diffusion_loss(model, batch, diffusion, schedule, tok.mask_id,
                                         torch.Generator().manual_seed(1000 * i + r), eos_id=tok.eos_id).loss)
                    for r in range(args.repeats)
                ]  # fmt: skip
                means.append(statistics.fmean(losses))
                variances.append(statistics.variance(losses))
        rows.append((interval, statistics.fmean(means), statistics.fmean(variances)))
    widest = rows[0][2]
    for interval, mean, variance in rows:
        print(f"| {interval} | {mean:.4f} | {variance:.3g} | {variance / widest:.3f} |")
    best = min(rows, key=lambda r: r[2])
    print(f"lowest variance: {best[0]}")


if __name__ == "__main__":
    main()
