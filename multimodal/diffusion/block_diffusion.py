"""Block diffusion (BD3-LM) training: each block a masked-diffusion ELBO given the clean blocks before it.

One forward over ``[x_t ; x_0]`` (length 2L, both halves at rotary positions 0..L-1) scores every block
at once under BD3-LM's mask (PAPERS.md section 7):

    x_t query, x_t key   same block (block-diagonal)
    x_t query, x_0 key   strictly earlier block
    x_0 query, x_0 key   same or earlier block (block-causal)
    x_0 query, x_t key   never

so a noisy block sees its own noisy tokens and the clean past, and the clean half is computed as the
sampler computes committed blocks. Logits are kept for the x_t half. Each (row, block) draws its own
noise level t, stratified across the batch's blocks when `antithetic` (the schedule's clipping gives
BD3-LM's clipped rates), so the token weight 1/p(t) is per block.

Blocks are laid out as the sampler decodes them (multimodal/sampling/forward.py, `block_causal`): a
row's prompt (the positions before its first maskable one) is block 0, which sees only itself, and the
answer is cut into blocks of `block_size` from its first position; a row with nothing before its first
maskable position (pre-training) is cut from position 0. Training and decoding then share their
attention pattern exactly, and the exact block cache (`sampler.cache: block`) decodes what was trained.
"""

from __future__ import annotations

import torch

from multimodal.diffusion.schedule import MaskSchedule


def block_ids(maskable: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, L) block of each position: 0 for the prompt, 1, 2, ... for the answer's blocks (module docstring)."""
    b, n = maskable.shape
    pos = torch.arange(n, device=maskable.device).expand(b, n)
    has = maskable.any(1, keepdim=True)
    # the first maskable position; a row with none is all prompt
    start = torch.where(has, maskable.long().argmax(1, keepdim=True), torch.full_like(pos[:, :1], n))
    offset = (start > 0).long()  # a prompt takes block 0; without one the answer's first block is 0
    return torch.where(pos < start, torch.zeros_like(pos), (pos - start) // block_size + offset)


def bd3_attention(blocks: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, 2L, 2L) bool: which of ``[x_t ; x_0]``'s queries may attend which keys (module docstring).

    Args:
        blocks: (B, L) block ids (`block_ids`).
        key_mask: (B, L) 1 for real tokens, 0 for padding (hidden in both halves), or None.
    """
    q, k = blocks[:, :, None], blocks[:, None, :]
    same, earlier = q == k, k < q
    top = torch.cat((same, earlier), dim=2)  # x_t queries: (B, L, 2L)
    bottom = torch.cat((torch.zeros_like(same), same | earlier), dim=2)  # x_0 queries
    allowed = torch.cat((top, bottom), dim=1)
    if key_mask is not None:
        allowed = allowed & torch.cat((key_mask, key_mask), dim=1).bool()[:, None, :]
    return allowed[:, None]


def block_times(
    blocks: torch.Tensor, schedule: MaskSchedule, antithetic: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, L) time of each position: one t per (row, block), drawn for every block of the batch at once."""
    b = blocks.shape[0]
    per_row = int(blocks.max()) + 1
    t = schedule.sample_t(b * per_row, antithetic=antithetic, generator=generator, device=blocks.device)
    return t.view(b, per_row).gather(1, blocks)
