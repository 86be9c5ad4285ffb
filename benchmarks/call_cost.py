"""What one backbone call costs as it shrinks: time of a forward over rows x width canvas columns.

The continuous batch (multimodal/sampling/batching.py) splits rows of unlike lengths into separate
calls only when each keeps enough columns (`--call-columns`); this prints the curve that choice rests
on, one table row per shape: milliseconds per call and columns per second.

    python benchmarks/call_cost.py                      # llada_small on this machine's threads
    python benchmarks/call_cost.py --preset llada_tiny --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from multimodal.backbone import backbone_preset, create_backbone

SHAPES = [(1, 40), (1, 70), (1, 113), (4, 113), (8, 40), (8, 113), (8, 161), (16, 113), (32, 80), (32, 113), (32, 161)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llada_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_backbone(backbone_preset(args.preset, vocab_size=16, max_seq_len=256)).eval()
    print(f"{args.preset}, vocab 16, random weights, {args.threads} threads, mean of {args.repeats} calls")
    print("| rows x width | columns | ms per call | columns/s |")
    print("|---|---:|---:|---:|")
    with torch.inference_mode():
        for rows, width in SHAPES:
            x = torch.randint(0, 16, (rows, width))
            model(x)  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                model(x)
            dt = (time.perf_counter() - start) / args.repeats
            print(f"| {rows} x {width} | {rows * width} | {dt * 1e3:.1f} | {rows * width / dt:,.0f} |")


if __name__ == "__main__":
    main()
