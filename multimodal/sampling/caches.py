"""Key/value cache policies of the generation loop: which positions each step recomputes.

Each ``SamplerConfig.cache`` name is a registered `CachePolicy` class, resolved once per generation
(forward.py builds one instance per generation; instances carry that generation's state). A policy
answers one question: the final hidden states of block [s, e) at a step of the block, computed through
the `CanvasForward` it is handed (`full`, `partial` and `at` run the model).

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

Why classes rather than a switch on the name: the block and delayed policies keep state across steps
(how far the canvas is final; which positions were masked a step ago, the width of a refresh cycle),
and a new policy is one registered class, not a new branch in the loop.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from multimodal.registry import new_registry

CACHES = new_registry("cache", "KV cache policy")


class CachePolicy:
    """Base policy: one per generation. Subclasses implement `hidden`.

    Attributes:
        needs_block_causal: exact only under block-causal attention (SamplerConfig refuses it otherwise).
        fills: keeps a KV cache (its first full forward allocates one).
    """

    needs_block_causal: ClassVar[bool] = False
    fills: ClassVar[bool] = True

    def __init__(self, config: Any):
        self.config = config

    def hidden(self, fwd: Any, s: int, e: int, step: int) -> torch.Tensor:
        """(rows, e - s, D) final hidden states of block [s, e) at step `step` of the block."""
        raise NotImplementedError


@CACHES.register("none")
class NoCache(CachePolicy):
    fills = False

    def hidden(self, fwd, s, e, step):
        return fwd.full(cached=False)[:, s:e]


@CACHES.register("prefix")
class PrefixCache(CachePolicy):
    """Fast-dLLM prefix cache: later steps recompute from the block start to the end of the canvas."""

    def end(self, fwd, e: int) -> int:
        return fwd.length

    def hidden(self, fwd, s, e, step):
        if step == 0:
            return fwd.full()[:, s:e]
        return fwd.partial(s, self.end(fwd, e))[:, : e - s]


@CACHES.register("dual")
class DualCache(PrefixCache):
    """Fast-dLLM dual cache: later steps recompute the current block only."""

    def end(self, fwd, e: int) -> int:
        return e


@CACHES.register("block")
class BlockCache(CachePolicy):
    """Exact block cache: positions before `final_upto` hold the keys/values of final tokens."""

    needs_block_causal = True

    def __init__(self, config: Any):
        super().__init__(config)
        self.final_upto = 0
        self.started = False

    def hidden(self, fwd, s, e, step):
        if not self.started:
            hidden = fwd.full()[:, s:e]
        elif step == 0:
            lo = self.final_upto  # recompute what was committed since (the previous block), then this block
            hidden = fwd.partial(lo, e)[:, s - lo :]
        else:
            hidden = fwd.partial(s, e)
        self.started, self.final_upto = True, s
        return hidden


@CACHES.register("delayed")
class DelayedCache(CachePolicy):
    """dKV-Cache-Decode: recompute the positions masked at the previous step; full refresh every
    `refresh_every` steps."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.prev_masked: torch.Tensor | None = None
        self.width = 0  # positions recomputed per call in the current refresh cycle

    def hidden(self, fwd, s, e, step):
        masked = fwd.x == fwd.special.mask_id
        recompute, self.prev_masked = self.prev_masked, masked
        if not fwd.cache_filled or recompute is None or step % self.config.refresh_every == 0:
            self.width = 0
            return fwd.full()[:, s:e]
        count = recompute.sum(1)  # (B,)
        if not self.width:
            # One host synchronisation per refresh cycle: masks only get fewer, so the first partial step's
            # widest row bounds the later ones and every call of the cycle has this one shape.
            self.width = max(1, int(count.max()))
        order = torch.argsort((~recompute).to(torch.int8), dim=1, stable=True)  # recomputed positions first
        slot = torch.minimum(torch.arange(self.width, device=order.device)[None], (count - 1).clamp_min(0)[:, None])
        positions = order.gather(1, slot)  # (B, width); short rows repeat their last position
        hidden = fwd.at(positions)
        pos = torch.cat([positions, positions]) if fwd.guided else positions  # (rows, width)
        # Scatter the block's positions into place, everything else into one spare slot (no data-dependent shape).
        where = torch.where((pos >= s) & (pos < e), pos - s, e - s)
        block = hidden.new_zeros(hidden.shape[0], e - s + 1, hidden.shape[-1])
        block.scatter_(1, where[..., None].expand(-1, -1, hidden.shape[-1]), hidden)
        return block[:, : e - s]


def cache_policy_class(name: str) -> type[CachePolicy]:
    return CACHES.get(name)


def create_cache_policy(config: Any) -> CachePolicy:
    """The policy `config.cache` names, for one generation."""
    return CACHES.get(config.cache)(config)


def list_caches(pattern: str = "*") -> list[str]:
    return CACHES.names(pattern)
