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

Attention is ``full`` (bidirectional, LLaDA) or ``block_causal`` (each position sees the prompt,
earlier blocks and its own block; the prompt sees only itself). Left padding is hidden from
attention and rotary positions count from each row's first real token. With classifier-free
guidance the conditional and unconditional canvases (prompt masked) run as one batch of 2B rows,
sharing nothing but the call.
"""

from __future__ import annotations

from typing import Any

import torch

from multimodal.sampling.base import SamplerConfig, SpecialIds


def block_ids(length: int, blocks: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(L,) block index of every canvas position; positions before the first block (the prompt) are -1."""
    ids = torch.full((length,), -1, dtype=torch.long, device=device)
    for i, (s, e) in enumerate(blocks):
        ids[s:e] = i
    return ids


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
        padded = attention_mask is not None and not bool(attention_mask.all())
        self.position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0) if padded else None
        mask: torch.Tensor | None = attention_mask.bool()[:, None, None, :] if padded else None  # (B, 1, 1, L)
        if config.attention == "block_causal":
            blk = block_ids(n, blocks, x.device)
            allowed = blk[None, :] <= blk[:, None]  # (L, L): query row, key column
            allowed = allowed[None, None].expand(b, 1, n, n)
            mask = allowed & mask if mask is not None else allowed  # (B, 1, L, L)
        self.mask = mask
        if self.guided:  # conditional rows, then unconditional rows
            self.position_ids = None if self.position_ids is None else torch.cat([self.position_ids] * 2)
            self.mask = None if mask is None else torch.cat([mask] * 2)
        self.cache = None
        self.final_upto = 0
        self.prev_masked: torch.Tensor | None = None
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
        pos = positions if self.position_ids is None else self.position_ids.gather(1, positions)
        mask = self.mask
        if mask is not None and mask.shape[2] > 1:  # block-causal rows of these queries
            mask = mask.gather(2, positions[:, None, :, None].expand(-1, 1, -1, mask.shape[3]))
        self.nfe += 1
        out = self.model(
            inp,
            attention_mask=mask,
            position_ids=pos,
            return_logits=False,
            cache=self.cache,
            cache_start=positions,
            **self.kwargs,
        )
        return out.hidden_states

    def _delayed(self, s: int, e: int, step: int) -> torch.Tensor:
        """Hidden states of block [s, e) under the delayed cache (module docstring)."""
        masked = self.x == self.special.mask_id
        recompute = self.prev_masked
        self.prev_masked = masked
        n = self.x.shape[1]
        if self.cache is None or recompute is None or step % self.config.refresh_every == 0:
            return self._call(0, n, 0)[:, s:e]
        count = recompute.sum(1)  # (B,)
        width = int(count.max())
        order = torch.argsort((~recompute).to(torch.int8), dim=1, stable=True)  # recomputed positions first
        slot = torch.minimum(torch.arange(width, device=order.device)[None], (count - 1).clamp_min(0)[:, None])
        positions = order.gather(1, slot)  # (B, width); short rows repeat their last position
        hidden = self._call_at(positions)
        rows = hidden.shape[0]
        block = torch.zeros(rows, e - s, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        pos = torch.cat([positions, positions]) if self.guided else positions
        inside = (pos >= s) & (pos < e)
        r, c = inside.nonzero(as_tuple=True)
        block[r, pos[r, c] - s] = hidden[r, c]
        return block

    def _call(self, lo: int, hi: int, cache_start: int | None) -> torch.Tensor:
        """Run the model on canvas positions [lo, hi); return hidden states (rows, hi - lo, D)."""
        from multimodal.backbone.cache import KVCache  # the one backbone type the loop needs

        inp = self._inputs()[:, lo:hi]
        pos = None if self.position_ids is None else self.position_ids[:, lo:hi]
        mask = self.mask
        if mask is not None and mask.shape[2] > 1:
            mask = mask[:, :, lo:hi]  # query rows of this call, every key column
        kwargs: dict[str, Any] = dict(attention_mask=mask, position_ids=pos, return_logits=False, **self.kwargs)
        if cache_start is not None:
            if cache_start == 0 and hi - lo == self.x.shape[1]:
                self.cache = KVCache()  # (re)fill from a full forward
            kwargs.update(cache=self.cache, cache_start=cache_start)
        self.nfe += 1
        return self.model(inp, **kwargs).hidden_states

    def logits(self, block: int, step: int) -> torch.Tensor:
        """(B, e - s, V) float32 logits of block `block` at its step `step` (guidance applied)."""
        s, e = self.blocks[block]
        mode, n = self.config.cache, self.x.shape[1]
        if mode == "none":
            hidden = self._call(0, n, None)[:, s:e]
        elif mode in ("prefix", "dual"):
            if step == 0:
                hidden = self._call(0, n, 0)[:, s:e]
            else:
                hi = n if mode == "prefix" else e
                hidden = self._call(s, hi, s)[:, : e - s]
        elif mode == "delayed":
            hidden = self._delayed(s, e, step)
        else:  # exact block cache: positions before `final_upto` hold keys/values of final tokens
            if self.cache is None:
                hidden = self._call(0, n, 0)[:, s:e]
            elif step == 0:
                lo = self.final_upto  # recompute what was committed since (the previous block), then this block
                hidden = self._call(lo, e, lo)[:, s - lo :]
            else:
                hidden = self._call(s, e, s)
            self.final_upto = s
        logits = self.model.head(hidden).float()
        if self.guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + (self.config.cfg_scale + 1.0) * (cond - uncond)
        return logits
