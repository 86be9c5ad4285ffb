"""Does the partner inform the binder? Three held-out measures for target / binder pair tasks (DSM-ppi and
the shared-backbone mode alike: the task's own collate lays each pair out).

* `paired_reconstruction`: the same positions of each held-out binder masked twice, refilled one token per
  step (most confident first, argmax) once with its true target and once with a control target; per-binder
  accuracy differences give the paired gap and its standard error, and hits per binder position show where
  the partner helps (for peptide-MHC: the anchors).
* `conditional_samples`: binders of a given length generated for a target with the DSM sampler (the run's
  temperature, step divisor and remasking), for per-position profiles against held-out binders.
* `elbo_scores`: the model's Monte-Carlo ELBO of each binder given its target (the engine's batched ELBO),
  for ranking binders above non-binders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from multimodal.sampling import sampler_config_class
from multimodal.sampling.engine import Engine
from tasks.base import Layout
from tasks.protein_eval import non_residue_ids, refill_sampler


def with_target(layout: Layout, target: str) -> Layout:
    """`layout` with another target (prompt and the protein modality input alike)."""
    return Layout(prompt=target, answer=layout.answer, meta=layout.meta, media={"protein": [target]})


def _binder_index(maskable: torch.Tensor) -> torch.Tensor:
    """(B, L) 0-based index of each maskable position within its row's binder (-1 elsewhere)."""
    return torch.where(maskable, maskable.long().cumsum(1) - 1, torch.full_like(maskable, -1, dtype=torch.long))


@torch.no_grad()
def _refill(engine: Engine, task: Any, layouts: Sequence[Layout], chosen: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per layout, a bool array over its binder: were the `chosen` binder positions refilled correctly."""
    tokenizer = engine.tokenizer
    batch = task.collate(list(layouts), tokenizer, engine.modalities)
    index = _binder_index(batch.maskable)
    masked = torch.zeros_like(batch.maskable)
    for r, picks in enumerate(chosen):
        masked[r] = torch.isin(index[r], torch.as_tensor(picks, dtype=torch.long)) & batch.maskable[r]
    xt = torch.where(masked, torch.full_like(batch.input_ids, tokenizer.mask_id), batch.input_ids)
    out = engine.infill(replace(batch, input_ids=xt), refill_sampler(engine, int(masked.sum(1).max())))
    out = out.sequences.cpu()
    result = []
    for r, picks in enumerate(chosen):
        right = (out[r] == batch.input_ids[r]) & masked[r]
        hits = np.zeros(len(layouts[r].answer), dtype=bool)
        hits[index[r][right].numpy()] = True
        result.append(hits[np.sort(picks)])
    return result


def paired_reconstruction(
    engine: Engine,
    task: Any,
    layouts: Sequence[Layout],
    controls: Sequence[str],
    rate: float = 0.5,
    seed: int = 0,
    batch_size: int = 32,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Refill `rate` of each binder with its true target and with `controls[i]`, on the same positions.

    Returns:
        accuracy with the true and the control target, the mean per-binder difference (true - control)
        with its standard error and z = gap / se, per binder position (1-based) the true and control
        accuracy with the number of masked tokens there, and with `groups` (a label per binder, such as
        its allele) the same summary per group (``per_group``).
    """
    if len(controls) != len(layouts):
        raise ValueError(f"{len(controls)} control targets for {len(layouts)} binders")
    if not layouts:
        raise ValueError("no binders to reconstruct")
    rng = np.random.default_rng(seed)
    chosen = []
    for lay in layouts:
        n = len(lay.answer)
        k = max(1, round(rate * n))
        chosen.append(np.sort(rng.choice(n, size=k, replace=False)))
    true_hits, ctrl_hits = [], []
    control_layouts = [with_target(lay, t) for lay, t in zip(layouts, controls, strict=True)]
    for i in tqdm(range(0, len(layouts), batch_size), desc="reconstruction", unit="batch", leave=False):
        part = slice(i, i + batch_size)
        true_hits += _refill(engine, task, layouts[part], chosen[part])
        ctrl_hits += _refill(engine, task, control_layouts[part], chosen[part])
    out = _summary(true_hits, ctrl_hits)
    if groups is not None:
        out["per_group"] = {}
        for name in sorted(set(groups)):
            rows = [i for i, g in enumerate(groups) if g == name]
            out["per_group"][name] = _summary([true_hits[i] for i in rows], [ctrl_hits[i] for i in rows])
    width = max(len(lay.answer) for lay in layouts)
    pos_true, pos_ctrl, pos_n = np.zeros(width), np.zeros(width), np.zeros(width)
    for picks, t, c in zip(chosen, true_hits, ctrl_hits, strict=True):
        np.add.at(pos_true, picks, t)
        np.add.at(pos_ctrl, picks, c)
        np.add.at(pos_n, picks, 1)
    return {
        "mask_rate": rate,
        **out,
        "per_position": [
            {
                "position": p + 1,
                "masked": int(pos_n[p]),
                "true": pos_true[p] / pos_n[p],
                "control": pos_ctrl[p] / pos_n[p],
            }
            for p in range(width)
            if pos_n[p] > 0
        ],
    }


def _summary(true_hits: Sequence[np.ndarray], ctrl_hits: Sequence[np.ndarray]) -> dict[str, Any]:
    """Pooled accuracies and the paired per-binder gap (mean, standard error, z) of one set of binders."""
    diffs = np.array([t.mean() - c.mean() for t, c in zip(true_hits, ctrl_hits, strict=True)])
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    total = sum(len(t) for t in true_hits)
    gap = float(diffs.mean())
    return {
        "binders": len(diffs),
        "accuracy_true": float(sum(t.sum() for t in true_hits) / total),
        "accuracy_control": float(sum(c.sum() for c in ctrl_hits) / total),
        "gap": gap,
        "gap_se": se,
        "gap_z": gap / se if se > 0 else float("nan"),
    }


@torch.no_grad()
def conditional_samples(
    engine: Engine,
    task: Any,
    targets: Sequence[str],
    length: int,
    fields: dict[str, Any],
    seed: int = 0,
    batch_size: int = 64,
) -> list[str]:
    """One binder of `length` residues per target, generated with the DSM sampler (`fields`: temperature,
    step_divisor, remasking); amino acids only."""
    tokenizer = engine.tokenizer
    sampler = engine.sampler(sampler_config_class("dsm")(name="dsm", forbid_ids=non_residue_ids(engine), **fields))
    generator = engine.generator(seed)
    out = []
    for i in tqdm(range(0, len(targets), batch_size), desc="generating binders", unit="batch", leave=False):
        layouts = [Layout(prompt=t, answer="A" * length, media={"protein": [t]}) for t in targets[i : i + batch_size]]
        batch = task.collate(layouts, tokenizer, engine.modalities)
        xt = torch.where(batch.maskable, torch.full_like(batch.input_ids, tokenizer.mask_id), batch.input_ids)
        result = engine.infill(replace(batch, input_ids=xt), sampler, generator=generator).sequences.cpu()
        for r in range(len(layouts)):
            out.append(tokenizer.decode(result[r][batch.maskable[r]].tolist()).replace(" ", ""))
    return out


def elbo_scores(
    engine: Engine, task: Any, layouts: Sequence[Layout], draws: int = 16, seed: int = 0, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) ELBO of each binder given its target in nats, and (N,) standard errors."""
    generator = torch.Generator().manual_seed(seed)
    est, se = [], []
    for i in tqdm(range(0, len(layouts), batch_size), desc="ELBO", unit="batch", leave=False):
        batch = task.collate(list(layouts[i : i + batch_size]), engine.tokenizer, engine.modalities)
        e, s = engine.elbo(batch, draws, generator)
        est.append(e.numpy())
        se.append(s.numpy())
    return np.concatenate(est), np.concatenate(se)
