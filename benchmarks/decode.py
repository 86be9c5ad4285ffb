"""Decoding speed and quality: a table of policy x cache x block length.

Two modes:

* ``--preset NAME`` (random weights): speed only. Prompts of `--prompt` random tokens, `--gen` new
  tokens; each row reports NFE, generated tokens per second, milliseconds per step (wall time / NFE:
  the per-step cost, where Python and kernel launches show on a GPU) and, for cached rows, the
  fraction of generated tokens identical to the uncached run of the same policy (1.000 = identical;
  the exact block cache under block-causal attention must be identical).
* ``--compile none,reduce-overhead`` (SamplerConfig.compile; ``none``, ``default``, ``reduce-overhead``)
  adds rows per compile mode: each compiled setting first runs one untimed generation (compilation
  and CUDA-graph recording; its seconds are the "compile s" column), then the timed ones; "= eager"
  is the fraction of tokens identical to the eager run of the same cache.
* ``--run RUN_DIR`` (a trained run): also the task metric on its test split (`--limit` examples),
  so the fastest setting that keeps the metric can be read off. NFE/batch is the forward passes the
  whole batch ran (its slowest row decides); steps/sample is the mean number of steps each sample
  needed (its last commit), the figure a one-sample-at-a-time decoder would see.

    python benchmarks/decode.py --preset llada_tiny --gen 256 --block 32 --prompt 128
    python benchmarks/decode.py --preset llada_tiny --caches none,dual --compile none,default --threads 1
    python benchmarks/decode.py --run runs/digits_reverse --limit 256
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

# set before tqdm is first imported: progress bars would interleave with the table
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from multimodal.backbone import backbone_preset, create_backbone  # noqa: E402
from multimodal.sampling import SpecialIds, create_sampler, generate, sampler_config_class  # noqa: E402

POLICIES = {
    "one-per-step": ("low_confidence", {}),
    "threshold 0.9": ("threshold", {"threshold": 0.9}),
    "threshold 0.7": ("threshold", {"threshold": 0.7}),
    "factor 1.0": ("factor", {"factor": 1.0}),
    "entropy 0.3": ("entropy_bounded", {"gamma": 0.3}),
    "dilated": ("dilated", {}),
    "dream entropy": ("dream", {"alg": "entropy"}),  # Dream's diffusion_generate schedule and score
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_generate(model, prompts, cfg, special, device, attention_mask=None, repeats=1):
    """Best wall time of `repeats` generations (a fresh sampler and generator each) and the last output."""
    sampler = create_sampler(cfg)
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = generate(
            model,
            prompts,
            sampler,
            special,
            attention_mask=attention_mask,
            generator=torch.Generator(device=device).manual_seed(0),
        )
        sync(device)
        best = min(best, time.perf_counter() - start)
    return out, best


def config_for(policy: str, cache: str, block: int, gen: int, steps: int | None, **extra):
    name, knobs = POLICIES[policy]
    steps = steps or gen  # one token per step for the fixed-schedule policy
    return sampler_config_class(name)(
        name=name, steps=steps, gen_length=gen, block_length=block, cache=cache, **knobs, **extra
    )


def preset_table(args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = backbone_preset(args.preset, max_seq_len=max(args.prompt + args.gen, 64))
    model = create_backbone(cfg, device=device).eval()
    if args.dtype != "float32":
        model.to(getattr(torch, args.dtype))
    vocab = cfg.vocab_size
    special = SpecialIds(mask_id=vocab - 1, eos_id=vocab - 2)
    g = torch.Generator().manual_seed(1)
    lengths = [args.prompt] * args.batch
    if args.mixed and args.batch > 1:
        lengths = [max(1, args.prompt - (i * args.prompt) // (2 * args.batch)) for i in range(args.batch)]
    prompts = [torch.randint(4, vocab - 3, (n,), generator=g).tolist() for n in lengths]
    print(
        f"{args.preset} random weights, {args.dtype}, batch {args.batch} "
        f"(prompt lengths {min(lengths)}-{max(lengths)}), "
        f"gen {args.gen}, device {device}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"| {'policy':<14} | {'cache':<7} | {'block':>5} | {'compile':<15} | {'NFE':>5} | {'tok/s':>9} | "
        f"{'ms/step':>8} | {'vs uncached':>11} | {'same tokens':>11} | {'= eager':>7} | {'compile s':>9} |"
    )
    print(
        f"|{'-' * 16}|{'-' * 9}|{'-' * 7}|{'-' * 17}|{'-' * 7}|{'-' * 11}|{'-' * 10}|{'-' * 13}|{'-' * 13}"
        f"|{'-' * 9}|{'-' * 11}|"
    )
    for policy in args.policies.split(","):
        for block in (int(b) for b in args.blocks.split(",")):
            eager_tokens = {}
            for mode in args.compile.split(","):
                base_rate, base_tokens = None, None
                for cache in args.caches.split(","):
                    extra = {"compile": mode}
                    if cache == "block":
                        extra["attention"] = "block_causal"
                    cfg_s = config_for(policy, cache, block, args.gen, args.steps, **extra)
                    warmup = ""
                    if mode != "none":  # compile (and record CUDA graphs) outside the timed runs
                        _, first = timed_generate(model, prompts, cfg_s, special, device)
                        warmup = f"{first:.1f}"
                    out, seconds = timed_generate(model, prompts, cfg_s, special, device, repeats=args.repeats)
                    tokens = out.generated.numel()
                    rate = tokens / seconds
                    if cache == "none":
                        base_rate, base_tokens = rate, out.generated
                    if cache == "none":
                        same = "(ref)"
                    elif base_tokens is not None:
                        same = f"{(out.generated == base_tokens).float().mean():.3f}"
                    else:
                        same = ""
                    if cache == "block":  # compare with the uncached block-causal run
                        ref_cfg = dataclasses.replace(cfg_s, cache="none", compile="none")
                        ref, _ = timed_generate(model, prompts, ref_cfg, special, device)
                        same = f"{(out.generated == ref.generated).float().mean():.3f}"
                    if mode == "none":
                        eager_tokens[cache] = out.generated
                    match = ""
                    if mode != "none" and cache in eager_tokens:
                        match = f"{(out.generated == eager_tokens[cache]).float().mean():.3f}"
                    ratio = f"{rate / base_rate:.2f}x" if base_rate else ""
                    cells = (
                        f"{out.nfe:>5} | {rate:>9.1f} | {1000 * seconds / out.nfe:>8.2f} | {ratio:>11} | {same:>11} "
                        f"| {match:>7} | {warmup:>9}"
                    )
                    print(f"| {policy:<14} | {cache:<7} | {block:>5} | {mode:<15} | {cells} |")


def run_table(args) -> None:
    from multimodal.train.build import load_run
    from multimodal.train.evaluate import evaluate

    run = load_run(args.run)
    base = run.config.sampler
    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else [base.block_length]
    for block in blocks:
        if base.gen_length % block:
            print(f"skipped block {block}: the run decodes {base.gen_length} tokens, not a multiple", file=sys.stderr)
    print(
        f"run {args.run}: task {run.config.task.name}, test split, {args.limit} examples, "
        f"gen {base.gen_length}, device {run.config.device}"
    )
    print(
        f"| {'policy':<14} | {'cache':<7} | {'block':>5} | {'compile':<15} | {'NFE/batch':>9} | {'steps/sample':>12} "
        f"| {'tok/s':>9} | metric |"
    )
    print(f"|{'-' * 16}|{'-' * 9}|{'-' * 7}|{'-' * 17}|{'-' * 11}|{'-' * 14}|{'-' * 11}|--------|")
    for policy in args.policies.split(","):
        for block in (b for b in blocks if base.gen_length % b == 0):
            for mode in args.compile.split(","):
                for cache in args.caches.split(","):
                    if cache == "block":
                        continue
                    name, knobs = POLICIES[policy]
                    fields = {
                        k: v
                        for k, v in dataclasses.asdict(base).items()
                        if k in {"temperature", "cfg_scale", "forbid_eos", "eos_lowest_confidence", "stop_at_eos"}
                    }
                    run.config.sampler = sampler_config_class(name)(
                        name=name,
                        steps=base.gen_length,
                        gen_length=base.gen_length,
                        block_length=block,
                        cache=cache,
                        compile=mode,
                        **knobs,
                        **fields,
                    )
                    if mode != "none":  # compile outside the measured evaluation
                        evaluate(run, "test", args.limit, batch_size=args.limit, write=False)
                    m = evaluate(run, "test", args.limit, batch_size=args.limit, write=False)  # the run keeps its eval
                    metric_name = next(k for k in m if isinstance(m[k], float) and k not in ("decode_seconds",))
                    cells = (
                        f"{m['nfe']:>9} | {m['steps_per_sample']:>12.2f} | {m['canvas_tokens_per_second']:>9.1f} "
                        f"| {metric_name} {m[metric_name]:.3f}"
                    )
                    print(f"| {policy:<14} | {cache:<7} | {block:>5} | {mode:<15} | {cells} |")
    run.config.sampler = base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None)
    p.add_argument("--run", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mixed", action="store_true", help="prompts of mixed lengths (left-padded)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="steps for fixed-schedule policies (default: gen)")
    p.add_argument("--blocks", default=None, help="comma-separated block lengths (default: 32, or the run's own)")
    p.add_argument("--caches", default="none,prefix,dual")
    p.add_argument("--policies", default="one-per-step")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--compile",
        default="none",
        help="comma-separated SamplerConfig.compile modes to compare: none, default, reduce-overhead",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        run_table(args)
    else:
        args.blocks = args.blocks or "32"
        preset_table(args)


if __name__ == "__main__":
    main()
