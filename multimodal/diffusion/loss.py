"""The masked-diffusion loss, computed only where tokens were masked.

LLaDA's objective scores masked positions only, so the output head is applied to the gathered
hidden states of those positions, in row chunks. A plain linear head (given as its (V, D) matrix)
goes through the fused kernel of linear_ce.py, which turns each chunk's logits into gradients at
once; any other head (a callable, such as DSM's MLP head with its logit cap) is checkpointed per
chunk and recomputed in the backward pass. Either way peak memory is one chunk of float32 logits
instead of the (B, L, V) tensor that the reference training code materialises (126k vocabulary:
8x the memory of an autoregressive model, PAPERS.md section 6).

Normalisations (PAPERS.md section 1; every term is CE x weight, weight = 1/p or 1):
  ``sequence``  sum / (B * L)                  LLaDA pre-training
  ``answer``    per-sample sum / answer length, mean over the batch      LLaDA SFT
  ``tokens``    sum / number of maskable tokens in the batch             DIFFA
  ``masked``    sum / number of masked tokens (mean over masked)         Whisper-LLaDA (with weight 1)

Packed rows (several documents per row, `document_ids` given, multimodal/train/packing.py): ``answer``
becomes per document (each document's sum / its maskable count, mean over the D documents), so the
loss equals the mean of the documents' losses computed alone; ``sequence`` divides by the number of
document tokens instead of B * L, so the padding tail of the last rows does not shrink it; ``tokens``
and ``masked`` are batch-wide counts already and stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from multimodal.diffusion.linear_ce import linear_cross_entropy
from multimodal.types import LossOutput

Normalisation = Literal["sequence", "answer", "tokens", "masked"]


def _chunk_ce(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor):
    logits = head(hidden).float()  # (n, V) in float32 whatever the autocast dtype
    ce = F.cross_entropy(logits, targets, reduction="none")
    correct = (logits.argmax(-1) == targets).sum()
    return ce, correct


def chunked_cross_entropy(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy of `head(hidden)` without keeping more than one chunk of logits.

    Args:
        hidden: (N, D) hidden states of the scored positions.
        head: maps (n, D) to (n, V) logits (a linear layer, or the DSM head with its logit cap).
        targets: (N,) target ids.
        chunk_size: rows per chunk.

    Returns:
        ce: (N,) float32 cross-entropy, differentiable.
        correct: number of rows whose argmax equals the target (no gradient).
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32), torch.zeros((), dtype=torch.long)
    ces, correct = [], torch.zeros((), dtype=torch.long, device=hidden.device)
    grad = torch.is_grad_enabled()
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if grad:
            ce, hits = checkpoint(_chunk_ce, head, h, y, use_reentrant=False)
        else:
            ce, hits = _chunk_ce(head, h, y)
        ces.append(ce)
        correct = correct + hits
    return torch.cat(ces), correct


def masked_diffusion_loss(
    hidden: torch.Tensor,
    head: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    masked: torch.Tensor,
    weight: torch.Tensor,
    maskable: torch.Tensor,
    normalisation: Normalisation = "answer",
    chunk_size: int = 1024,
    document_ids: torch.Tensor | None = None,
) -> LossOutput:
    """Weighted cross-entropy at masked positions, normalised as named.

    Args:
        hidden: (B, L, D) final hidden states of the corrupted input.
        head: the output head: its (V, D) matrix (fused path) or a callable (n, D) -> (n, V).
        x0: (B, L) clean targets.
        masked: (B, L) bool, positions that were masked.
        weight: (B,) or (B, L) weight of each masked token (1/p for LLaDA, ones for plain CE).
        maskable: (B, L) bool, positions that could be masked (answer tokens incl. EOS padding).
        normalisation: one of ``sequence``, ``answer``, ``tokens``, ``masked`` (module docstring).
        chunk_size: rows per head chunk.
        document_ids: (B, L) long document of each position in packed rows (0..D-1 across the batch, -1
            on padding), or None for one document per row (module docstring).

    Returns:
        LossOutput with the scalar loss and logging statistics.
    """
    b, n = x0.shape
    if weight.dim() == 1:
        weight = weight[:, None].expand(b, n)
    rows = masked.nonzero(as_tuple=True)  # indices of masked positions, row-major
    num_masked, num_maskable = int(rows[0].numel()), int(maskable.sum())
    coeff = weight[rows].float()  # (N,): each row's factor in the final sum
    if document_ids is not None and bool((maskable & (document_ids < 0)).any()):
        raise ValueError("maskable positions must belong to a document (document_ids -1 marks padding)")
    if normalisation == "sequence":
        coeff = coeff / (b * n if document_ids is None else max(int((document_ids >= 0).sum()), 1))
    elif normalisation == "answer" and document_ids is None:
        answer_len = maskable.sum(1).clamp_min(1).float()  # (B,)
        coeff = coeff / answer_len[rows[0]] / b
    elif normalisation == "answer":
        docs = max(int(document_ids.max()) + 1, 1)
        answer_len = torch.bincount(document_ids[maskable], minlength=docs).clamp_min(1).float()  # (D,)
        coeff = coeff / answer_len[document_ids[rows]] / docs
    elif normalisation == "tokens":
        coeff = coeff / max(num_maskable, 1)
    elif normalisation == "masked":
        coeff = coeff / max(num_masked, 1)
    else:
        raise ValueError(f"unknown loss normalisation '{normalisation}' (sequence, answer, tokens, masked)")
    if isinstance(head, torch.Tensor):
        loss, ce, correct = linear_cross_entropy(hidden[rows], head, x0[rows], coeff, chunk_size)
    else:
        ce, correct = chunked_cross_entropy(hidden[rows], head, x0[rows], chunk_size)
        loss = (ce * coeff).sum()
    if num_masked == 0:  # keep the graph connected so every rank runs the same backward
        loss = loss + hidden.sum() * 0.0
    return LossOutput(
        loss=loss,
        num_masked=num_masked,
        num_maskable=num_maskable,
        mean_ce=float(ce.detach().mean()) if num_masked else 0.0,
        accuracy=float(correct) / num_masked if num_masked else None,
    )
