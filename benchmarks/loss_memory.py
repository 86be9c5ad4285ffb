"""Peak memory of the masked-diffusion loss: masked-positions-only chunked head vs the naive full-logits loss.

Variants: naive (what the reference training code does), ours with a plain linear head (the fused
kernel of multimodal/diffusion/linear_ce.py, used for LLaDA backbones) at two chunk sizes, and ours
with a callable head (per-chunk checkpointing, used for heads that are not one matrix).

Each variant runs in a fresh subprocess (CPU) that holds the final hidden states (B, L, D) and the
output head (V, D) of a LLaDA-width model, then computes loss + backward once. The figure is the
peak resident memory during that step minus the resident memory just before it (ru_maxrss), so it
counts what the loss itself allocates: logits, softmax, their gradients, the head's gradient.

    python benchmarks/loss_memory.py                       # vocab 126464, seq 2048, width 2048, batch 2
    python benchmarks/loss_memory.py --width 4096 --batch 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(variant: str, batch: int, seq: int, width: int, vocab: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    from multimodal.diffusion.corruption import mask_tokens
    from multimodal.diffusion.loss import masked_diffusion_loss

    torch.set_num_threads(2)
    torch.manual_seed(0)  # the head's initialisation: identical in every variant's process
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, seq, width, generator=g).requires_grad_()
    head = torch.nn.Linear(width, vocab, bias=False)
    x0 = torch.randint(0, vocab, (batch, seq), generator=g)
    maskable = torch.ones(batch, seq, dtype=torch.bool)
    t = (torch.arange(batch) + 0.5) / batch  # mask rates spread over (0, 1): about half the tokens on average
    _, masked = mask_tokens(x0, t, maskable, 0, g)
    weight = 1 / t
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "naive":
        logits = head(hidden).float()  # (B, L, V): what the reference training code materialises
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        loss = ((ce * masked * weight[:, None]).sum(1) / maskable.sum(1)).mean()
    else:  # "fused": the head matrix (linear_ce.py); "checkpointed": the head as a callable, recomputed per chunk
        head_arg = head.weight if variant == "fused" else head
        loss = masked_diffusion_loss(hidden, head_arg, x0, masked, weight, maskable, "answer", chunk_size=chunk).loss
    loss.backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "peak_mib": (peak - before) / 1024,
        "seconds": elapsed,
        "loss": float(loss),
        "masked": int(masked.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=126464)
    parser.add_argument("--chunks", default="1024,256", help="comma-separated chunk sizes (rows) to compare")
    parser.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.batch, args.seq, args.width, args.vocab, args.chunk)
    if args.child:
        print(json.dumps(child(args.child, *shape)))
        return
    rows = []
    chunks = [int(c) for c in args.chunks.split(",")]
    runs = [("naive", args.chunk)] + [("fused", c) for c in chunks] + [("checkpointed", chunks[0])]
    for variant, chunk in runs:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--width",
            str(args.width),
            "--vocab",
            str(args.vocab),
            "--chunk",
            str(chunk),
        ]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        row["name"] = {
            "naive": "naive full logits (B, L, V) fp32",
            "fused": f"ours: fused head, {chunk}-row chunks",
            "checkpointed": f"ours: checkpointed head, {chunk}-row",
        }[variant]
        rows.append(row)
    print(
        f"batch {args.batch} x seq {args.seq}, width {args.width}, vocab {args.vocab}, "
        f"{rows[0]['masked']} masked positions, CPU fp32; memory = peak RSS during loss+backward minus RSS before"
    )
    head = ("loss", "peak extra memory (MiB)", "vs naive", "fwd+bwd (s)", "loss value")
    print(f"| {head[0]:<36} | {head[1]:>24} | {head[2]:>8} | {head[3]:>11} | {head[4]:>10} |")
    print(f"|{'-' * 38}|{'-' * 26}|{'-' * 10}|{'-' * 13}|{'-' * 12}|")
    for r in rows:
        ratio = rows[0]["peak_mib"] / max(r["peak_mib"], 1e-9)
        cells = f"{r['peak_mib']:>24.0f} | {ratio:>7.1f}x | {r['seconds']:>11.2f} | {r['loss']:>10.4f}"
        print(f"| {r['name']:<36} | {cells} |")


if __name__ == "__main__":
    main()
