"""DSM's own mask-filling protocol (its evaluation/mask_filling.py), as an option next to ours.

Ours (tasks/protein_eval.py) masks exactly round(rate x n) residues of each sequence, scores the 20
amino acids, pools cross-entropy over masked tokens and fills only the masked positions. DSM's
evaluation differs in each of these, and `reference_mask_filling` follows it:

* masks are independent draws: each residue is masked with probability `rate` (never CLS, EOS or
  padding), so a sequence may get more or fewer than rate x n masks, or none;
* sequences are sorted longest first and scored in batches of 4, as the reference's DataLoader;
* logits cover the full 33-token vocabulary: the cross-entropy is the mean over a batch's masked
  positions, and the reported loss is the mean of those batch means (each batch counts once, however
  many masks it holds); perplexity = exp(loss);
* predictions are the argmax over the full vocabulary at every position, masked or not: accuracy,
  support-weighted precision / recall / F1 and MCC are computed at the masked positions, and ASc
  compares the decoded argmax sequence (special tokens dropped) with the true one.

One departure, where the reference is wrong: it decodes the argmax of padding positions too, so a
shorter sequence of a batch gets residues appended that the model predicted for padding; we decode
real positions only, which is what the paper's ASc means. A batch without any mask (possible at low
rates) makes the reference's mean cross-entropy NaN; we leave it out of the loss and count it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from multimodal.sampling.engine import Engine
from tasks.base import Layout

REFERENCE_BATCH = 4


def _weighted(values: torch.Tensor, n_true: torch.Tensor) -> float:
    return float((values * n_true).sum() / n_true.sum())


def classification_report(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, support-weighted precision / recall / F1 (zero_division=0) and multiclass MCC, as
    scikit-learn computes them, from predicted and true class ids (1-D)."""
    from tasks.protein_metrics import _class_counts

    tp, n_pred, n_true = _class_counts(pred, target, num_classes)
    precision = torch.where(n_pred > 0, tp / n_pred.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(n_true > 0, tp / n_true.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    s, c = float(n_true.sum()), float(tp.sum())
    cov = (s * s - float((n_pred**2).sum())) * (s * s - float((n_true**2).sum()))
    mcc = (c * s - float((n_pred * n_true).sum())) / math.sqrt(cov) if cov > 0 else 0.0
    return {
        "accuracy": c / s,
        "precision": _weighted(precision, n_true),
        "recall": _weighted(recall, n_true),
        "f1": _weighted(f1, n_true),
        "mcc": mcc,
    }


@torch.no_grad()
def reference_mask_filling(
    engine: Engine,
    task: Any,
    layouts: Sequence[Layout],
    rates: Sequence[float],
    batch_size: int = REFERENCE_BATCH,
    seed: int = 42,
) -> dict[str, dict[str, Any]]:
    """Metrics per rate under DSM's protocol (module docstring); the masks depend only on `seed`."""
    from tasks.protein_metrics import mean_alignment_score

    tokenizer = engine.tokenizer
    vocab = len(tokenizer)
    ordered = sorted(layouts, key=lambda lay: len(lay.answer), reverse=True)  # stable: ties keep their order
    results = {}
    progress = tqdm(total=len(rates) * len(ordered), desc="mask filling (reference)", unit="seq", leave=False)
    for rate in rates:
        generator = torch.Generator().manual_seed(seed)
        losses, empty, preds, targets, refs, filled = [], 0, [], [], [], []
        for i in range(0, len(ordered), batch_size):
            chunk = ordered[i : i + batch_size]
            batch = task.collate(chunk, tokenizer, engine.modalities)
            x0 = batch.input_ids
            masked = (torch.rand(x0.shape, generator=generator) < rate) & batch.maskable  # (B, L)
            xt = torch.where(masked, torch.full_like(x0, tokenizer.mask_id), x0)
            logits = engine.logits(replace(batch, input_ids=xt)).cpu().float()  # (B, L, V): every token
            if masked.any():
                losses.append(float(torch.nn.functional.cross_entropy(logits[masked], x0[masked])))
            else:
                empty += 1
            argmax = logits.argmax(-1)  # (B, L)
            preds.append(argmax[masked])
            targets.append(x0[masked])
            real = batch.attention_mask.bool() if batch.attention_mask is not None else torch.ones_like(masked)
            for row, lay in enumerate(chunk):
                refs.append(lay.answer)
                filled.append(tokenizer.decode(argmax[row][real[row]].tolist()))  # special tokens dropped
            progress.update(len(chunk))
        if not losses:
            raise ValueError(f"no position was masked at rate {rate}: nothing to score")
        loss = sum(losses) / len(losses)
        metrics: dict[str, Any] = {
            "loss": loss,
            "perplexity": math.exp(loss),
            **classification_report(torch.cat(preds), torch.cat(targets), vocab),
            "asc": mean_alignment_score(refs, filled),
            "masked_tokens": int(sum(p.numel() for p in preds)),
            "batches": len(losses),
            "batches_without_masks": empty,
        }
        results[f"{round(rate * 100)}%"] = metrics
    progress.close()
    return results
