"""The model call of one denoising step: masks, positions, guidance batching and the KV cache.

`CanvasForward` turns "hidden states of block [s, e) at step i" into backbone calls, so the
generation loop stays one loop whatever the cache. Which positions a step recomputes is the cache
policy's business (caches.py: ``none``, Fast-dLLM ``prefix`` / ``dual``, the exact ``block`` cache,
dKV's ``delayed``); this module gives it three calls: `full` (the whole canvas, filling or refreshing
the cache), `partial` (a contiguous slice through the cache) and `at` (any positions per row).

Shapes and synchronisation: every call gets its positions as (rows, n) tensors and the cache is
refilled in place by the full forwards after the first, so within a block every call has the same
shapes (``none``: the canvas; ``dual`` and ``block``: the block, or the previous block and the block
at a block's first step; ``prefix``: the block to the end of the canvas; ``delayed``: the widest row
of the refresh cycle, found with one host synchronisation per cycle) and nothing here reads a value
back to the host after the constructor's padding check. That is what lets compiled.py run the
call through torch.compile / CUDA graphs (SamplerConfig.compile) without recompiling per block.

Attention is ``full`` (bidirectional, LLaDA) or ``block_causal`` (each position sees the prompt,
earlier blocks and its own block; the prompt sees only itself). Left padding is hidden from
attention and rotary positions count from each row's first real token. With classifier-free
guidance the conditional and unconditional canvases (prompt masked) run as one batch of 2B rows,
sharing nothing but the call.
"""

from __future__ import annotations

import torch

from multimodal.backbone.cache import KVCache
from multimodal.sampling.base import SpecialIds
from multimodal.sampling.caches import create_cache_policy
from multimodal.sampling.compiled import ModelCall
from multimodal.sampling.loop_settings import LoopSettings
from multimodal.types import DiffusionModel, Media


def block_ids(length: int, blocks: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(L,) block index of every canvas position; positions before the first block (the prompt) are -1."""
    ids = torch.full((length,), -1, dtype=torch.long, device=device)
    for i, (s, e) in enumerate(blocks):
        ids[s:e] = i
    return ids


def _param_dtype(model: DiffusionModel) -> torch.dtype | None:
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return None


class CanvasForward:
    """Computes the logits of one block of the canvas `x` (mutated in place by the loop).

    Attributes read by cache policies: `x` (B, L), `special`, `guided` (2B rows), `length` (L) and
    `cache_filled`. `block_index` (B, L), when given, is each row's own block of every column for
    block-causal attention (the continuous batch aligns rows whose prompts and blocks start at
    different columns); otherwise every row shares `blocks` and the prompt is block -1.
    """

    def __init__(
        self,
        model: DiffusionModel,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        conditioned: torch.Tensor,
        blocks: list[tuple[int, int]],
        config: LoopSettings,
        special: SpecialIds,
        media: Media | None = None,
        block_index: torch.Tensor | None = None,
    ):
        config = config.loop  # a sampler config carries its policy too: keep what the call shares
        self.model, self.x, self.config, self.special, self.media = model, x, config, special, media
        self.conditioned, self.blocks = conditioned, blocks
        b, n = x.shape
        self.length = n
        self.guided = config.cfg_scale > 0
        rows = 2 * b if self.guided else b  # conditional rows, then unconditional rows
        compiled = config.compile != "none"
        padded = attention_mask is not None and not bool(attention_mask.all())  # once per generation
        if padded:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, L): rotary skips padding
        else:
            positions = torch.arange(n, device=x.device).expand(b, n)
        # Every call gets explicit (rows, n) positions and canvas indices (tensors, not ints: see compiled.py).
        self.position_ids = torch.cat([positions] * (rows // b)).contiguous()  # (rows, L)
        self.canvas_index = torch.arange(n, device=x.device).repeat(rows, 1)  # (rows, L)
        mask: torch.Tensor | None = attention_mask.bool()[:, None, None, :] if padded else None  # (B, 1, 1, L)
        if config.attention == "block_causal" and block_index is not None:  # each row its own blocks (batching.py)
            allowed = (block_index[:, None, :] <= block_index[:, :, None])[:, None]  # (B, 1, L, L): query, key
            mask = allowed & mask if mask is not None else allowed
        elif config.attention == "block_causal":
            blk = block_ids(n, blocks, x.device)
            allowed = blk[None, :] <= blk[:, None]  # (L, L): query row, key column
            allowed = allowed[None, None].expand(b, 1, n, n)
            mask = allowed & mask if mask is not None else allowed  # (B, 1, L, L)
            if compiled:  # graph inputs own their memory (an expanded view cannot be copied into a CUDA graph)
                mask = mask.contiguous()
        self.mask = torch.cat([mask] * 2) if self.guided and mask is not None else mask
        self.call = ModelCall(model, config.compile, config.cache)
        # a media placeholder is never proposed: the next forward would read it as a media slot
        self.never = sorted(set(getattr(model, "placeholder_ids", {}).values()))
        self.policy = create_cache_policy(config)
        self.cache: KVCache | None = None
        self.nfe = 0

    @property
    def cache_filled(self) -> bool:
        return self.cache is not None and self.cache.filled

    def _inputs(self) -> torch.Tensor:
        if not self.guided:
            return self.x
        uncond = torch.where(self.conditioned, torch.full_like(self.x, self.special.mask_id), self.x)
        return torch.cat([self.x, uncond])

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """Run the model on the canvas positions (B, n) through the cache; return (rows, n, D)."""
        if self.guided:
            positions = torch.cat([positions, positions])
        inp = self._inputs().gather(1, positions)
        pos = self.position_ids.gather(1, positions)
        mask = self.mask
        if mask is not None and mask.shape[2] > 1:  # block-causal rows of these queries
            mask = mask.gather(2, positions[:, None, :, None].expand(-1, 1, -1, mask.shape[3]))
        self.nfe += 1
        return self.call(inp, mask, pos, self.cache, positions, self.media, partial=True)

    def full(self, cached: bool = True) -> torch.Tensor:
        """Run the model on the whole canvas; return (rows, L, D). With `cached` the call fills the cache
        (the first one allocates it) or refreshes it in place."""
        if not cached:
            return self._run(0, self.length, None)
        if not self.cache_filled:
            inp = self._inputs()
            self.cache = self.call.reusable_cache(inp.shape[0], self.length, inp.device, _param_dtype(self.model))
            if self.cache is None:  # the first full forward allocates and fills the cache
                self.cache = KVCache()
                self.nfe += 1
                return self.call.fill(inp, self.mask, self.position_ids, self.cache, self.media)
        return self._run(0, self.length, 0)

    def partial(self, lo: int, hi: int) -> torch.Tensor:
        """Run the model on canvas positions [lo, hi) through the filled cache; return (rows, hi - lo, D).

        The positions go as a (rows, n) tensor (an int offset only at 0), so calls of one width share a graph.
        """
        return self._run(lo, hi, self.canvas_index[:, lo:hi] if lo else 0)

    def _run(self, lo: int, hi: int, start: int | torch.Tensor | None) -> torch.Tensor:
        inp = self._inputs()[:, lo:hi]
        pos = self.position_ids[:, lo:hi]
        mask = self.mask
        if mask is not None and mask.shape[2] > 1:
            mask = mask[:, :, lo:hi]  # query rows of this call, every key column
        self.nfe += 1
        if start is None:
            return self.call(inp, mask, pos, None, 0, self.media)
        return self.call(inp, mask, pos, self.cache, start, self.media, partial=hi - lo < self.length)

    def logits(self, block: int, step: int) -> torch.Tensor:
        """(B, e - s, V) float32 logits of block `block` at its step `step` (guidance applied)."""
        s, e = self.blocks[block]
        hidden = self.policy.hidden(self, s, e, step)
        logits = self.model.head(hidden).float()
        if self.guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + (self.config.cfg_scale + 1.0) * (cond - uncond)
        if self.never:  # after guidance: -inf - -inf would be NaN
            logits[..., self.never] = -torch.inf
        return logits
