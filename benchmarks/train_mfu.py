"""Training throughput, MFU and peak memory of one LLaDA backbone: the issue's GPU training figure.

Each (batch, setting) runs in a fresh subprocess: build the backbone (random weights, fp32 master
weights), then time optimiser steps of the real training path: `diffusion_loss` (LLaDA objective,
masked-positions-only chunked head) under bf16 autocast on CUDA, backward, fused AdamW. Rows are full
length (no padding), every token maskable. MFU counts model FLOPs (multimodal/train/flops.py: matrix
products incl. the L x L attention, x3 for the backward, the head on masked rows only) against the card's
dense BF16 peak; peak memory is torch.cuda.max_memory_allocated (on the CPU: the process's peak RSS). A
batch that runs out of memory is reported as OOM, not as a crash.

    python benchmarks/train_mfu.py --preset llada_1b --seq 2048 --batches 4,8            # on a GPU
    python benchmarks/train_mfu.py --preset llada_tiny --seq 128 --batches 2 --steps 3   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(preset: str, seq: int, batch: int, steps: int, warmup: int, compiled: bool, checkpointing: bool) -> dict:
    import resource

    import torch

    from multimodal.backbone.transformer import LLaDABlock, create_backbone
    from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
    from multimodal.train.flops import mfu, training_flops
    from multimodal.train.optim import OptimConfig, build_optimizer
    from multimodal.types import MultimodalBatch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = create_backbone(preset).to(device)
    if checkpointing:  # recompute each block in the backward pass
        from torch.utils.checkpoint import checkpoint

        for block in (m for m in model.modules() if isinstance(m, LLaDABlock)):
            block.forward = (lambda f: lambda *a, **k: checkpoint(f, *a, use_reentrant=False, **k))(block.forward)
    if compiled:
        for block in (m for m in model.modules() if isinstance(m, LLaDABlock)):
            block.compile()
    config = DiffusionConfig()
    schedule = config.build_schedule()
    optimizer, _ = build_optimizer(model, OptimConfig(lr=1e-4, warmup_steps=10), 1000)
    vocab = model.config.vocab_size
    g = torch.Generator(device=device).manual_seed(0)
    mask_id = vocab - 1
    x0 = torch.randint(0, vocab - 1, (batch, seq), device=device, generator=g)
    data = MultimodalBatch(input_ids=x0, maskable=torch.ones_like(x0, dtype=torch.bool))

    def step() -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = diffusion_loss(model, data, config, schedule, mask_id, g)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.num_masked

    try:
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        masked, start = 0, time.perf_counter()
        for _ in range(steps):
            masked += step()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    except torch.OutOfMemoryError:
        return {"batch": batch, "oom": True}
    flops = training_flops(model.config, [seq] * batch * steps, head_rows=masked)
    name = torch.cuda.get_device_name() if cuda else None
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "batch": batch,
        "oom": False,
        "tok_s": batch * seq * steps / elapsed,
        "tflops": flops / elapsed / 1e12,
        "mfu": mfu(flops / elapsed, name),
        "peak_mib": peak,
        "step_s": elapsed / steps,
        "device": name or "cpu",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llada_1b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batches", default="4,8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settings", default="eager,compile", help="comma list of eager, compile, checkpointing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(**spec)))
        return
    print("| setting | batch | tokens/s | model TFLOP/s | MFU | peak memory (MiB) | s/step | device |")
    print("|---|---|---|---|---|---|---|---|")
    for setting in args.settings.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            spec = {
                "preset": args.preset,
                "seq": args.seq,
                "batch": batch,
                "steps": args.steps,
                "warmup": args.warmup,
                "compiled": "compile" in setting,
                "checkpointing": "checkpointing" in setting,
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
            )
            if proc.returncode:
                print(f"| {setting} | {batch} | failed: {proc.stderr.strip().splitlines()[-1:]} |||||")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if r["oom"]:
                print(f"| {setting} | {batch} | out of memory ||||||")
                continue
            mfu_text = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            print(
                f"| {setting} | {batch} | {r['tok_s']:,.0f} | {r['tflops']:.2f} | {mfu_text} | {r['peak_mib']:,.0f} "
                f"| {r['step_s']:.3f} | {r['device']} |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
