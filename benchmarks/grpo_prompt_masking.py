"""What d1's prompt masking does to the one-forward log-probabilities diffu-GRPO trains on, per task.

diffu-GRPO scores a completion by one forward with the completion fully masked and each prompt token
masked with probability p (d1: 0.15). For each rate this samples `--group` completions of `--prompts`
training prompts with the run's sampler at `--temperature`, then reports, on the prompt-masked view:
the one-step (argmax) exact match of the fully masked completion, and the mean summed log-probability
of the completions that are right and of those that are wrong. Where every prompt token decides an
answer token (digit reversal), masking 15 % of them leaves the one-step prediction little to go on.

    python benchmarks/grpo_prompt_masking.py --run runs/digits_reverse_sft --rates 0,0.05,0.15
"""

from __future__ import annotations

import argparse

import torch

from multimodal.diffusion.grpo import completion_logprobs, completion_mask, prompt_masked_view
from multimodal.sampling.base import merge_sampler
from multimodal.sampling.generate import left_pad
from multimodal.train.build import load_run
from multimodal.train.rewards import build_reward


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--rates", default="0,0.05,0.15")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    task, tok = run.task, run.tokenizer
    layouts = [lay for lay in task.train_layouts()[: args.prompts] for _ in range(args.group)]
    engine = run.engine()
    prompts = task.prompt_batch(layouts, tok, engine.modalities)
    sampler = merge_sampler(run.config.sampler, {"temperature": args.temperature})
    out = engine.generate(prompts, sampler, generator=engine.generator(1))
    exact = build_reward({"exact_match": 1.0}, task)
    right = torch.tensor([exact(lay.prompt, t, lay) for lay, t in zip(layouts, engine.texts(out), strict=True)]) == 1
    seqs = out.sequences
    start = seqs.shape[1] - out.generated.shape[1]
    _, attention = left_pad(prompts.prompts, tok.pad_id)
    attention = torch.cat([attention, torch.ones_like(out.generated)], 1)
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    maskable = attention.bool().clone()
    maskable[:, start:] = False
    mask = completion_mask(out.generated, {tok.eos_id})
    model = run.model.eval()
    print(f"{len(layouts)} completions of {args.prompts} prompts, {float(right.float().mean()):.1%} exact")
    print("| prompt mask rate | one-step exact match | log pi(right completion) | log pi(wrong completion) |")
    print("|---|---|---|---|")
    for rate in (float(r) for r in args.rates.split(",")):
        view = prompt_masked_view(
            seqs, maskable, (start, seqs.shape[1]), tok.mask_id, rate, torch.Generator().manual_seed(0)
        )
        logp = (completion_logprobs(model, view, seqs, (start, seqs.shape[1]), attention, positions) * mask).sum(1)
        hidden = model(view, attention_mask=attention, position_ids=positions, return_logits=False).hidden_states
        guesses = [engine.text(row) for row in model.head(hidden[:, start:]).argmax(-1).tolist()]
        one_step = sum(g.strip() == lay.answer for g, lay in zip(guesses, layouts, strict=True)) / len(layouts)
        print(f"| {rate} | {one_step:.1%} | {float(logp[right].mean()):.2f} | {float(logp[~right].mean()):.2f} |")


if __name__ == "__main__":
    main()
