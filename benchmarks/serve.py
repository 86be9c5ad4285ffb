"""Serving throughput on loopback: continuous batching vs one request at a time.

Writes a run with random weights (the digit task's tokenizer, a chosen backbone preset), starts
``mmdiff serve --run`` as a subprocess for each ``--max-batch`` setting, fires `--requests`
concurrent ``/v1/completions`` requests of mixed prompt lengths and answer lengths (one token per
step, blocks of `--block`), and prints one table row per setting: wall time, completed answer tokens
per second, requests per second, p50 / p99 latency, the share of padding in the canvases the model
ran (the server's own count) and how many came back complete (none may be lost). The throughput
ratio is against the first setting (one at a time by default). Every request of a run gets the same
prompt, length and seed in each setting, and the answers are compared: the batch must not change them.

    python benchmarks/serve.py                                   # llada_tiny, 32 requests, batch 1 vs 32
    python benchmarks/serve.py --preset llada_small --cache dual --batches 1,8,32
    python benchmarks/serve.py --preset llada_small --batches 1,32/1000000000,32   # one canvas vs groups

A setting ``B/C`` is ``--max-batch B --call-columns C`` (the server's default otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def write_run(folder: Path, preset: str, block: int, context: int, cache: str) -> None:
    """A digit-task run with random weights and `preset`'s shape (vocabulary cut to the tokenizer's)."""
    import torch

    from multimodal.train.build import build_run
    from multimodal.train.config import load_experiment
    from multimodal.train.run import save_run_checkpoint

    sets = [
        f"train.output_dir={folder}",
        "task.train_size=64",
        "task.test_size=4",
        "task.validation_size=4",
        f"backbone.preset={preset}",
        "backbone.vocab_size=16",
        f"backbone.max_seq_len={context}",
        f"sampler.block_length={block}",
        f"sampler.gen_length={block}",
        f"sampler.steps={block}",
        "sampler.stop_at_eos=false",
        f"sampler.cache={cache}",
    ]
    torch.manual_seed(0)
    run = build_run(load_experiment("digits_reverse", sets))
    save_run_checkpoint(run, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(n: int, block: int, seed: int) -> list[dict]:
    """Mixed prompts (4-48 digits) and answers (1-4 blocks), one token per step, a seed each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 48)))
        tokens = block * rng.randint(1, 4)
        out.append({"prompt": digits + "=", "max_tokens": tokens, "seed": i, "sampler": {"steps": tokens}})
    return out


async def fire(url: str, model: str, requests: list[dict], timeout: float) -> list[tuple[float, dict | None]]:
    """All requests at once; (latency in seconds, response JSON or None) each."""
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=len(requests))) as client:

        async def one(body: dict) -> tuple[float, dict | None]:
            start = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/completions", json={"model": model, **body})
                return time.perf_counter() - start, r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                return time.perf_counter() - start, None

        return await asyncio.gather(*(one(b) for b in requests))


def measure(run_dir: Path, setting: str, requests: list[dict], threads: int, timeout: float) -> dict:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "multimodal.cli", "serve", "--run", str(run_dir), "--port", str(port)]
    max_batch, _, call_columns = setting.partition("/")
    cmd += ["--max-batch", max_batch, "--max-queue", str(len(requests))]
    cmd += ["--call-columns", call_columns] if call_columns else []
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the server did not start: {server.stderr.read() if server.poll() is not None else ''}")
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        asyncio.run(fire(url, model, requests[:2], timeout))  # warm-up (first-call allocations), not timed
        start = time.perf_counter()
        results = asyncio.run(fire(url, model, requests, timeout))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(60)
    padding = re.search(r"padding ([\d.]+)% of the canvas columns", server.stderr.read())
    done = [(lat, r) for lat, r in results if r is not None and r["choices"][0]["finish_reason"]]
    latencies = sorted(lat for lat, _ in done)
    tokens = sum(r["usage"]["completion_tokens"] for _, r in done)
    return {
        "setting": setting,
        "wall": wall,
        "tok_s": tokens / wall,
        "req_s": len(done) / wall,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] if latencies else float("nan"),
        "complete": len(done),
        "padding": f"{float(padding.group(1)):.0f} %" if padding else "?",
        "answers": [r["choices"][0]["text"] if r else None for _, r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llada_tiny")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument(
        "--batches", default="1,32", help="max-batch[/call-columns] settings, the first is the baseline"
    )
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--cache", default="none", help="the server's KV cache (none, dual, prefix, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request before it counts as lost")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over the settings; each row is its median-wall round"
    )
    args = parser.parse_args()
    requests = workload(args.requests, args.block, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_run(Path(tmp), args.preset, args.block, 256, args.cache)
        run_dir = Path(tmp) / "digits_reverse"
        settings = args.batches.split(",")
        rounds = [
            [measure(run_dir, b, requests, args.threads, args.timeout) for b in settings] for _ in range(args.repeats)
        ]
    runs = [sorted((r[k] for r in rounds), key=lambda m: m["wall"]) for k in range(len(settings))]
    rows = [m[len(m) // 2] for m in runs]  # the median round of each setting
    base = rows[0]
    print(
        f"{args.preset} random weights, {args.requests} concurrent /v1/completions (prompts 5-49 tokens, answers "
        f"{args.block}-{4 * args.block} tokens, one per step, blocks of {args.block}), cache {args.cache}, "
        f"{args.threads} threads, loopback, median of {args.repeats} interleaved rounds (wall range in brackets)"
    )
    print("| batch/columns | wall s | answer tok/s | req/s | vs first | p50 s | p99 s | padding | complete | same |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, m in zip(rows, runs, strict=True):
        same = sum(a == b for a, b in zip(r["answers"], base["answers"], strict=True))
        print(
            f"| {r['setting']} | {r['wall']:.2f} [{m[0]['wall']:.1f}-{m[-1]['wall']:.1f}] | {r['tok_s']:.1f} | "
            f"{r['req_s']:.2f} | "
            f"{r['tok_s'] / base['tok_s']:.2f}x | {r['p50']:.2f} | {r['p99']:.2f} | {r['padding']} | "
            f"{r['complete']}/{args.requests} | {same}/{args.requests} |"
        )


if __name__ == "__main__":
    main()
