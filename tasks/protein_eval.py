"""Evaluation of protein diffusion models (PAPERS.md section 5), for DSM and shared-backbone runs.

* Mask-filling at several rates: a random fraction of each test sequence's residues is masked and
  filled in one forward (argmax over amino acids); masked-position accuracy, weighted F1,
  cross-entropy, perplexity, and ASc between the filled and the true sequence.
* Unconditional generation at temperature 1 with the DSM sampler: 1/2/3-mer Jensen-Shannon
  divergence to held-out natural sequences, diversity (mean pairwise identity), novelty (max
  identity to training sequences) and the low-complexity fraction; written as FASTA with the
  sampler settings in each header.
* Binder reconstruction: half of each true binder masked and refilled (one token per step, most
  confident first) given its true target, and given another pair's target (a non-interacting
  partner): the accuracy gap shows how much the target informs the binder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from multimodal.sampling import sampler_config_class
from multimodal.sampling.engine import Engine
from multimodal.types import MultimodalBatch
from tasks.base import Layout

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def non_residue_ids(engine: Engine) -> list[int]:
    """Every id of the model's output vocabulary that is not one of the 20 amino acids (never sampled):
    the tokenizer's other tokens and the rows a backbone's vocabulary has beyond the tokenizer's (a
    shared-mode backbone is built with room to spare)."""
    tokenizer = engine.tokenizer
    residues = {tokenizer.token_id(c) for c in RESIDUES}
    return [i for i in range(max(len(tokenizer), engine.vocab_size)) if i not in residues]


def refill_sampler(engine: Engine, n: int):
    """The DSM sampler config that refills `n` masks one per step, most confident first, argmax over the
    20 amino acids (reconstruction: the model's best guess, no sampling noise)."""
    return sampler_config_class("dsm")(
        name="dsm",
        steps=n,
        gen_length=n,
        block_length=n,
        temperature=0.0,
        remasking="low_confidence",
        forbid_ids=non_residue_ids(engine),
    )


def _random_subset(maskable: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """(B, L) bool: max(1, round(rate * n)) uniformly chosen maskable positions per row."""
    scores = torch.rand(maskable.shape, generator=generator)
    scores[~maskable] = 2.0
    ranks = scores.argsort(1).argsort(1)
    k = (maskable.sum(1).float() * rate).round().clamp_min(1).long()
    return (ranks < k[:, None]) & maskable


@torch.no_grad()
def mask_filling(
    engine: Engine,
    task,
    layouts: Sequence[Layout],
    rates: Sequence[float],
    batch_size: int = 32,
    seed: int = 0,
    draws: int = 1,
) -> dict[str, dict[str, Any]]:
    """Metrics per rate, pooled over `draws` independent mask draws of every sequence (more draws,
    less sampling noise); `accuracy_per_draw` lists each draw's accuracy. The masks depend only on
    `seed` and the sequences, so two models evaluated with the same seed see the same masks."""
    from tasks.protein_metrics import MaskedTokenMetrics, mean_alignment_score

    if draws < 1:
        raise ValueError(f"mask-filling needs at least one draw, got {draws}")
    tokenizer = engine.tokenizer
    residue_ids = torch.tensor([tokenizer.token_id(c) for c in RESIDUES])
    lookup = torch.full((len(tokenizer),), -1, dtype=torch.long)
    lookup[residue_ids] = torch.arange(len(RESIDUES))
    results = {}
    progress = tqdm(total=len(rates) * draws * len(layouts), desc="mask filling", unit="seq", leave=False)
    for rate in rates:
        generator = torch.Generator().manual_seed(seed)
        meter = MaskedTokenMetrics(len(RESIDUES))
        refs, preds, per_draw = [], [], []
        for _ in range(draws):
            draw = MaskedTokenMetrics(len(RESIDUES))
            for i in range(0, len(layouts), batch_size):
                chunk = layouts[i : i + batch_size]
                batch = task.collate(chunk, tokenizer, engine.modalities)
                masked = _random_subset(batch.maskable, rate, generator)
                x0 = batch.input_ids
                xt = torch.where(masked, torch.full_like(x0, tokenizer.mask_id), x0)
                logits = engine.logits(replace(batch, input_ids=xt)).cpu()
                logits = logits[..., residue_ids]  # amino acids only
                target = lookup[x0]
                keep = masked & (target >= 0)  # rare letters (X, B, ...) are not scored
                meter.update(logits, target.clamp_min(0), keep)
                draw.update(logits, target.clamp_min(0), keep)
                filled = torch.where(masked, residue_ids[logits.argmax(-1)], x0)
                for row, lay in zip(range(len(chunk)), chunk, strict=True):
                    refs.append(lay.answer)
                    preds.append(tokenizer.decode(filled[row][batch.maskable[row]].tolist()))
                progress.update(len(chunk))
            per_draw.append(draw.compute()["accuracy"])
        metrics: dict[str, Any] = meter.compute()
        metrics["asc"] = mean_alignment_score(refs, preds)
        metrics["accuracy_per_draw"] = per_draw
        results[f"{round(rate * 100)}%"] = metrics
    progress.close()
    return results


@torch.no_grad()
def generate_sequences(
    engine: Engine, lengths: Sequence[int], sampler_fields: dict[str, Any], seed: int = 0, batch_size: int = 16
) -> list[str]:
    """Unconditional sequences of the given lengths: ``<cls> [mask] * n <eos>`` right-padded, infilled
    with the DSM sampler (`sampler_fields`: temperature, step divisor, remasking)."""
    tokenizer = engine.tokenizer
    cfg = sampler_config_class("dsm")(name="dsm", forbid_ids=non_residue_ids(engine), **sampler_fields)
    sampler = engine.sampler(cfg)
    generator = engine.generator(seed)
    prefix = [tokenizer.cls_id] if getattr(tokenizer, "cls_id", None) is not None else []
    out = []
    for i in tqdm(range(0, len(lengths), batch_size), desc="generating", unit="batch", leave=False):
        chunk = lengths[i : i + batch_size]
        width = len(prefix) + max(chunk) + 1
        ids = torch.full((len(chunk), width), tokenizer.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for r, n in enumerate(chunk):
            ids[r, : len(prefix) + n + 1] = torch.tensor(prefix + [tokenizer.mask_id] * n + [tokenizer.eos_id])
            attention[r, : len(prefix) + n + 1] = 1
        canvas = MultimodalBatch(input_ids=ids, maskable=ids == tokenizer.mask_id, attention_mask=attention)
        result = engine.infill(canvas, sampler, generator=generator)
        for r, n in enumerate(chunk):
            out.append(tokenizer.decode(result.sequences[r, len(prefix) : len(prefix) + n].tolist()))
    return out


def generated_set_metrics(
    generated: Sequence[str], natural: Sequence[str], train: Sequence[str], seed: int = 0
) -> dict[str, float]:
    from tasks.protein_metrics import diversity, kmer_js_divergences, low_complexity_fraction, novelty

    rng = np.random.default_rng(seed)
    out: dict[str, float] = dict(kmer_js_divergences(generated, natural))
    out["diversity_mean_pairwise_identity"] = diversity(generated, rng=rng)["mean_pairwise_identity"]
    out["novelty_mean_max_identity_to_train"] = novelty(generated, train, rng=rng, max_reference=500)[
        "mean_max_identity"
    ]
    out["low_complexity_fraction"] = float(low_complexity_fraction(generated))
    out["natural_low_complexity_fraction"] = float(low_complexity_fraction(natural))
    return out


@torch.no_grad()
def binder_reconstruction(
    engine: Engine,
    task,
    layouts: Sequence[Layout],
    rate: float = 0.5,
    shuffled: bool = False,
    seed: int = 0,
    batch_size: int = 16,
) -> float:
    """Accuracy of refilling `rate` of each binder given its true target (or another pair's target)."""
    if shuffled:
        targets = [lay.prompt for lay in layouts]
        targets = targets[1:] + targets[:1]  # each binder meets the next pair's target
        layouts = [
            Layout(prompt=t, answer=lay.answer, meta=lay.meta, media={"protein": [t]})
            for t, lay in zip(targets, layouts, strict=True)
        ]
    tokenizer = engine.tokenizer
    generator = torch.Generator().manual_seed(seed)
    hits = total = 0
    desc = "binders (shuffled partners)" if shuffled else "binders"
    for i in tqdm(range(0, len(layouts), batch_size), desc=desc, unit="batch", leave=False):
        batch = task.collate(layouts[i : i + batch_size], tokenizer, engine.modalities)
        masked = _random_subset(batch.maskable, rate, generator)
        xt = torch.where(masked, torch.full_like(batch.input_ids, tokenizer.mask_id), batch.input_ids)
        out = engine.infill(replace(batch, input_ids=xt), refill_sampler(engine, int(masked.sum(1).max())))
        hits += int((out.sequences.cpu()[masked] == batch.input_ids[masked]).sum())
        total += int(masked.sum())
    return hits / max(total, 1)


def samples_fasta(sequences: Sequence[str], header: str) -> str:
    """Generated sequences as FASTA text, headed ``sample_<i> <header>`` (the sampler settings)."""
    from tasks.protein_io import format_fasta

    return format_fasta([(f"sample_{i} {header}", s) for i, s in enumerate(sequences)])
