"""The model call of one denoising step: masks, positions, guidance batching and the KV cache.

`CanvasForward` turns "logits of block [s, e) at step i" into one backbone call, so the generation
loop stays one loop whatever the cache:

* ``none``: a forward over the whole canvas every step (the LLaDA reference).
* ``prefix`` (Fast-dLLM): at a block's first step a full forward fills the cache; later steps of the
  block recompute everything from the block start to the end of the canvas, attending to the cached
  prefix. Refreshed once per block, so approximate.
* ``dual`` (Fast-dLLM): as prefix, but later steps recompute the current block only, attending to the
  cached prefix and the cached (stale) masked suffix.
* ``block`` (exact, block-causal attention only): the cache persists across blocks; a block's first
  step recomputes the previous block (now final) and the current one, later steps the current one.
  Since no position attends to later blocks, this gives the same tokens as no cache.
* ``delayed`` (dKV-Cache-Decode): a full forward at a block's first step and every `refresh_every`
  steps; other steps recompute only the positions that were still masked at the previous step
  (those masked now and those decoded then), so a decoded token's keys and values are cached one
  step after it is decoded, with its final identity, and reused from the step after. Rows with
  fewer such positions repeat their last one (identical values, so the result is exact per row).

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

from typing import Any

import torch

from multimodal.backbone.cache import KVCache
from multimodal.sampling.base import SamplerConfig, SpecialIds
from multimodal.sampling.compiled import ModelCall


def block_ids(length: int, blocks: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(L,) block index of every canvas position; positions before the first block (the prompt) are -1."""
    ids = torch.full((length,), -1, dtype=torch.long, device=device)
    for i, (s, e) in enumerate(blocks):
        ids[s:e] = i
    return ids


def _param_dtype(model: Any) -> torch.dtype | None:
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return None


class CanvasForward:
    """Computes the logits of one block of the canvas `x` (mutated in place by the loop)."""

    def __init__(
        self,
        model: Any,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        conditioned: torch.Tensor,
        blocks: list[tuple[int, int]],
        config: SamplerConfig,
        special: SpecialIds,
        model_kwargs: dict[str, Any],
    ):
        self.model, self.x, self.config, self.special, self.kwargs = model, x, config, special, model_kwargs
        self.conditioned, self.blocks = conditioned, blocks
        b, n = x.shape
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
        if config.attention == "block_causal":
            blk = block_ids(n, blocks, x.device)
            allowed = blk[None, :] <= blk[:, None]  # (L, L): query row, key column
            allowed = allowed[None, None].expand(b, 1, n, n)
            mask = allowed & mask if mask is not None else allowed  # (B, 1, L, L)
            if compiled:  # graph inputs own their memory (an expanded view cannot be copied into a CUDA graph)
                mask = mask.contiguous()
        self.mask = torch.cat([mask] * 2) if self.guided and mask is not None else mask
        self.call = ModelCall(model, config.compile, config.cache)
        self.cache: KVCache | None = None
        self.final_upto = 0
        self.prev_masked: torch.Tensor | None = None
        self.width = 0  # delayed cache: positions recomputed per call in the current refresh cycle
        self.nfe = 0

    def _inputs(self) -> torch.Tensor:
        if not self.guided:
            return self.x
        uncond = torch.where(self.conditioned, torch.full_like(self.x, self.special.mask_id), self.x)
        return torch.cat([self.x, uncond])

    def _call_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Run the model on the canvas positions (B, n) through the cache; return (rows, n, D)."""
        if self.guided:
            positions = torch.cat([positions, positions])
        inp = self._inputs().gather(1, positions)
        pos = self.position_ids.gather(1, positions)
        mask = self.mask
        if mask is not None and mask.shape[2] > 1:  # block-causal rows of these queries
            mask = mask.gather(2, positions[:, None, :, None].expand(-1, 1, -1, mask.shape[3]))
        self.nfe += 1
        return self.call(inp, mask, pos, self.cache, positions, self.kwargs, partial=True)

    def _delayed(self, s: int, e: int, step: int) -> torch.Tensor:
        """Hidden states of block [s, e) under the delayed cache (module docstring)."""
        masked = self.x == self.special.mask_id
        recompute = self.prev_masked
        self.prev_masked = masked
        n = self.x.shape[1]
        if self.cache is None or recompute is None or step % self.config.refresh_every == 0:
            self.width = 0
            return self._call(0, n, True)[:, s:e]
        count = recompute.sum(1)  # (B,)
        if not self.width:
            # One host synchronisation per refresh cycle: masks only get fewer, so the first partial step's
            # widest row bounds the later ones and every call of the cycle has this one shape.
            self.width = max(1, int(count.max()))
        order = torch.argsort((~recompute).to(torch.int8), dim=1, stable=True)  # recomputed positions first
        slot = torch.minimum(torch.arange(self.width, device=order.device)[None], (count - 1).clamp_min(0)[:, None])
        positions = order.gather(1, slot)  # (B, width); short rows repeat their last position
        hidden = self._call_at(positions)
        pos = torch.cat([positions, positions]) if self.guided else positions  # (rows, width)
        # Scatter the block's positions into place, everything else into one spare slot (no data-dependent shape).
        where = torch.where((pos >= s) & (pos < e), pos - s, e - s)
        block = hidden.new_zeros(hidden.shape[0], e - s + 1, hidden.shape[-1])
        block.scatter_(1, where[..., None].expand(-1, -1, hidden.shape[-1]), hidden)
        return block[:, : e - s]

    def _call(self, lo: int, hi: int, cached: bool) -> torch.Tensor:
        """Run the model on canvas positions [lo, hi); return hidden states (rows, hi - lo, D).

        With `cached`, a call over the whole canvas (re)fills the cache in place and a partial call
        reads it; the partial call's positions go as a (rows, n) tensor (an int offset only at 0).
        """
        inp = self._inputs()[:, lo:hi]
        pos = self.position_ids[:, lo:hi]
        mask = self.mask
        if mask is not None and mask.shape[2] > 1:
            mask = mask[:, :, lo:hi]  # query rows of this call, every key column
        self.nfe += 1
        n = self.x.shape[1]
        if not cached:
            return self.call(inp, mask, pos, None, 0, self.kwargs)
        if lo == 0 and hi == n and (self.cache is None or not self.cache.filled):
            dtype = _param_dtype(self.model)
            self.cache = self.call.reusable_cache(inp.shape[0], n, inp.device, dtype)
            if self.cache is None:  # the first full forward allocates and fills the cache
                self.cache = KVCache()
                return self.call.fill(inp, mask, pos, self.cache, self.kwargs)
        start = lo if lo == 0 else self.canvas_index[:, lo:hi]
        return self.call(inp, mask, pos, self.cache, start, self.kwargs, partial=hi - lo < n)

    def logits(self, block: int, step: int) -> torch.Tensor:
        """(B, e - s, V) float32 logits of block `block` at its step `step` (guidance applied)."""
        s, e = self.blocks[block]
        mode, n = self.config.cache, self.x.shape[1]
        if mode == "none":
            hidden = self._call(0, n, False)[:, s:e]
        elif mode in ("prefix", "dual"):
            if step == 0:
                hidden = self._call(0, n, True)[:, s:e]
            else:
                hi = n if mode == "prefix" else e
                hidden = self._call(s, hi, True)[:, : e - s]
        elif mode == "delayed":
            hidden = self._delayed(s, e, step)
        else:  # exact block cache: positions before `final_upto` hold keys/values of final tokens
            if self.cache is None:
                hidden = self._call(0, n, True)[:, s:e]
            elif step == 0:
                lo = self.final_upto  # recompute what was committed since (the previous block), then this block
                hidden = self._call(lo, e, True)[:, s - lo :]
            else:
                hidden = self._call(s, e, True)
            self.final_upto = s
        logits = self.model.head(hidden).float()
        if self.guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + (self.config.cfg_scale + 1.0) * (cond - uncond)
        return logits
