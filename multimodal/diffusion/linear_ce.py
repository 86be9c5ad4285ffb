"""Fused linear + cross-entropy for a plain output head, chunked, with gradients computed on the fly.

The loss is a fixed linear combination of per-row cross-entropies, sum_i c_i CE_i, with
coefficients c_i known before the head runs (1/p and the normalisation). So each chunk's logits can
be turned into its gradients right away, d/dlogits = c_i (softmax - onehot), and dropped: only the
gradients of the inputs (N, D) and of the head matrix (V, D) are kept for the backward pass. Peak
memory is one chunk of float32 logits plus the head gradient the optimiser needs anyway, and the
head's matrix products run three times per chunk instead of four (no recomputation).
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, coeff, chunk_size):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = hidden.shape[0]
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        hits = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h, y = hidden[start:end], targets[start:end]
            logits = (h @ weight.t()).float()  # (n, V)
            lse = logits.logsumexp(-1)
            ce[start:end] = lse - logits.gather(-1, y[:, None]).squeeze(-1)
            hits += (logits.argmax(-1) == y).sum()
            if need_h or need_w:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' buffer
                g[torch.arange(end - start, device=g.device), y] -= 1.0
                g.mul_(coeff[start:end, None])
                if need_h:
                    grad_h[start:end] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_w:  # accumulated in place: no (V, D) temporary per chunk
                    grad_w.addmm_(g.t(), h.float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(ce, hits)
        return (ce * coeff).sum(), ce, hits

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_hits):
        grad_h, grad_w = ctx.saved_tensors
        # scaled in place: a second copy of the (V, D) head gradient would double the peak memory
        # (so this graph cannot be back-propagated twice, which training never does)
        dh = None if grad_h is None else grad_h.mul_(grad_loss.to(grad_h.dtype))
        dw = None if grad_w is None else grad_w.mul_(grad_loss).to(ctx.weight_dtype)
        return dh, dw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    coeff: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sum_i coeff_i * CE(hidden_i @ weight.T, targets_i), without materialising all logits.

    Args:
        hidden: (N, D) hidden states of the scored positions.
        weight: (V, D) output head matrix.
        targets: (N,) target ids.
        coeff: (N,) float32 coefficient of each row in the loss.
        chunk_size: rows per chunk.

    Returns:
        loss: scalar, differentiable with respect to `hidden` and `weight`.
        ce: (N,) per-row cross-entropy (no gradient).
        hits: number of rows whose argmax equals the target (no gradient).
    """
    if hidden.shape[0] == 0:
        zero = hidden.sum() * 0.0 + weight.sum() * 0.0
        return zero.float(), hidden.new_zeros(0, dtype=torch.float32), torch.zeros((), dtype=torch.long)
    return _LinearCrossEntropy.apply(hidden, weight, targets, coeff.float(), chunk_size)
