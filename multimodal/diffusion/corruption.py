"""The forward process: mask maskable tokens independently with probability p, and LLaDA's random
length truncation of pre-training batches; plus BERT's corruption of the selected positions, which the
masked-LM baseline of ESM uses (80 % mask, 10 % random token, 10 % unchanged)."""

from __future__ import annotations

import torch


def mask_tokens(
    x0: torch.Tensor,
    p_mask: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt x0 into xt.

    Args:
        x0: (B, L) clean token ids.
        p_mask: (B,) or (B, L) masking probability per sequence or per token.
        maskable: (B, L) bool; only these positions can be masked (answers, never prompts).
        mask_id: id of the mask token.
        generator: source of randomness.

    Returns:
        xt: (B, L) with masked positions replaced by `mask_id`.
        masked: (B, L) bool, the positions that were masked.
    """
    if p_mask.dim() == 1:
        p_mask = p_mask[:, None]  # (B, 1) broadcasts over positions
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    masked = (u < p_mask) & maskable
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def bert_corruption(
    xt: torch.Tensor,
    x0: torch.Tensor,
    selected: torch.Tensor,
    maskable: torch.Tensor,
    random_prob: float,
    keep_prob: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BERT / ESM corruption: of the `selected` positions (all masked in `xt`), a `keep_prob` share gets
    its true token back and a `random_prob` share a random token; the loss still scores all of them.

    The random token is the token at a uniformly drawn maskable position of the batch, so it follows
    the data's own unigram distribution and never is a special token or another modality's token
    (no vocabulary list needed). Returns the new (B, L) input.
    """
    if random_prob <= 0.0 and keep_prob <= 0.0:
        return xt
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    keep = selected & (u < keep_prob)
    swap = selected & (u >= keep_prob) & (u < keep_prob + random_prob)
    pool = x0[maskable]
    if pool.numel() == 0:
        return xt
    picks = torch.randint(0, pool.numel(), x0.shape, generator=generator, device=x0.device)
    xt = torch.where(keep, x0, xt)
    return torch.where(swap, pool[picks], xt)


def random_truncation_length(
    length: int, prob: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> int:
    """With probability `prob`, a length drawn uniformly from [1, length]; otherwise `length`.

    LLaDA truncates about 1% of pre-training batches this way so the model also sees short inputs.
    """
    if prob <= 0.0:
        return length
    if float(torch.rand((), generator=generator, device=device)) >= prob:
        return length
    return int(torch.randint(1, length + 1, (), generator=generator, device=device))
