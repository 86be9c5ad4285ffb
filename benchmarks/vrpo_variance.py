"""VRPO's variance reductions, measured: the spread of the preference score on fixed pairs and models.

The preference score s = beta [(B_pi(y_w) - B_ref(y_w)) - (B_pi(y_l) - B_ref(y_l))] is estimated
`--repeats` times per pair with fresh masking noise (multimodal/diffusion/preference.py) under each
setting: the budget n (masked copies per ELBO estimate), its allocation (n_t timesteps x n_mask masks
each) and antithetic sampling (policy and reference on the same copies). The table gives the variance
across repeats, averaged over the pairs, and its ratio to the plainest setting (n = 1, independent
copies), as LLaDA 1.5 reports it. Policy and reference must differ (the same weights make the
antithetic score exactly 0): e.g. a VRPO-trained run against its SFT start.

    python benchmarks/vrpo_variance.py --policy runs/digits_reverse_vrpo --reference runs/digits_reverse_sft \
        --pairs runs/pairs/digits_reverse.jsonl --num-pairs 64 --repeats 32 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from multimodal.diffusion.preference import copies_elbo, draw_copies, preference_score
from multimodal.train.build import load_run
from multimodal.train.preferences import read_pairs
from multimodal.train.vrpo import collate_pairs

# (label, n_t, n_mask, antithetic, estimator)
SETTINGS = [
    ("n=1", 1, 1, False, "count"),
    ("n=1, antithetic", 1, 1, True, "count"),
    ("n=8 as 1 timestep x 8 masks", 1, 8, False, "count"),
    ("n=8 as 8 timesteps x 1 mask", 8, 1, False, "count"),
    ("n=8 as 8 x 1, antithetic (VRPO)", 8, 1, True, "count"),
    ("n=8 as 8 x 1, antithetic, rate estimator", 8, 1, True, "rate"),
]


@torch.no_grad()
def score_variance(policy, reference, batch, mask_id, schedule, beta, repeats, n_t, n_mask, antithetic, estimator):
    scores = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        draw = dict(timesteps=n_t, masks_per_timestep=n_mask, estimator=estimator, schedule=schedule, generator=g)
        copies = draw_copies(batch, mask_id, **draw)
        b_pi = copies_elbo(policy, batch, copies)
        b_ref = copies_elbo(reference, batch, copies if antithetic else draw_copies(batch, mask_id, **draw))
        p = batch.input_ids.shape[0] // 2
        scores.append(preference_score(b_pi[:p], b_pi[p:], b_ref[:p], b_ref[p:], beta).score)
    stacked = torch.stack(scores)  # (repeats, pairs)
    return float(stacked.var(0).mean()), float(stacked.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--num-pairs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=32)
    ap.add_argument("--beta", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy_run, reference_run = load_run(args.policy), load_run(args.reference)
    run = policy_run
    pairs, report = read_pairs(args.pairs, run.task, run.tokenizer, run.modalities)
    batch = collate_pairs(pairs[: args.num_pairs], run.task, run.tokenizer, run.modalities)
    schedule = run.config.diffusion.build_schedule()
    policy, reference = policy_run.model.eval(), reference_run.model.eval()
    print(f"{report.summary()}; {min(args.num_pairs, len(pairs))} pairs, {args.repeats} repeats, beta {args.beta}")
    print("| setting | Var(score), mean over pairs | ratio to n=1 | mean score | seconds |")
    print("|---|---|---|---|---|")
    base = None
    for label, n_t, n_mask, antithetic, estimator in SETTINGS:
        start = time.perf_counter()
        var, mean = score_variance(
            policy, reference, batch, run.tokenizer.mask_id, schedule, args.beta, args.repeats, n_t, n_mask,
            antithetic, estimator,
        )  # fmt: skip
        base = base or var
        print(f"| {label} | {var:.4g} | {var / base:.4f} | {mean:.3f} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
