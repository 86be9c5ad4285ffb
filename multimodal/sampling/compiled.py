"""The model call of a denoising step, eager or through `torch.compile` (SamplerConfig.compile).

On a GPU a small model's step costs Python and kernel launches rather than arithmetic: a forward of
llada_1b is some 500 kernels. `ModelCall` runs the backbone forward of the loop through
`torch.compile` (``default``: Inductor kernels; ``reduce-overhead``: the same, replayed as CUDA graphs,
so a step is a handful of launches). The loop hands it tensors only, so a graph depends on shapes and
not on Python values: positions and cache offsets are (rows, n) tensors, never ints that change
from block to block (a changing int would specialise one graph per block). Within a generation the
whole-canvas calls have one shape, and the partial calls one shape (``dual``), two (``block``: the
first step of a block also recomputes the previous block) or one per block (``prefix``) or refresh
cycle (``delayed``). Graphs are kept per kind of call (see `_compiled`): the first shape of a kind
compiles a static graph (what ``dynamic=False`` gives), a second shape one graph with symbolic sizes
that serves every later shape, so a generation compiles 1 (``none``) to 3 graphs whatever the number
of blocks. Later generations recompile a kind when one of its sizes changes for the first time (the
canvas length, the batch) or a special case first appears (dynamo specialises sizes of 1, and a
batch without padding has no mask); after that, new prompt widths and batch sizes reuse the graphs
(tests/test_compiled_decoding.py counts them).

The KV cache is filled by one eager forward (it allocates the buffers); compiled calls then write
into it in place. Under CUDA graphs the buffers must keep their addresses, so they are marked as
static inputs and, with ``reduce-overhead``, kept per model after the generation and reused by the
next one of the same shape (`release_static_caches` frees them); a new address would make the CUDA
graphs re-record. So with ``reduce-overhead`` a model runs one generation at a time (two interleaved
generations of the same shape would share the kept cache).

Compiled results may differ from eager ones in the last bits (fused kernels reduce in another
order); on the CPU in float32 the tiny models decode the same tokens (tests/test_compiled_decoding.py).
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch

from multimodal.backbone.cache import KVCache
from multimodal.types import DiffusionModel, Media

COMPILE_MODES = ("none", "default", "reduce-overhead")

_STATIC_CACHES: weakref.WeakKeyDictionary[Any, KVCache] = weakref.WeakKeyDictionary()


def _hidden_states(
    model: DiffusionModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    cache: KVCache | None,
    cache_start: int | torch.Tensor,
    media: Media | None,
) -> torch.Tensor:
    """The one model call of a step: (rows, n) ids -> (rows, n, D) final hidden states."""
    out = model(
        input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        return_logits=False,
        cache=cache,
        cache_start=cache_start,
        media=media,
    )
    return out.hidden_states


@functools.cache
def _compiled(mode: str, cache: str, kind: str) -> Callable[..., torch.Tensor]:
    """`_hidden_states` compiled for one compile mode, cache mode and kind of call (``full``: the whole
    canvas; ``partial``: the positions a cache recomputes).

    Dynamo keeps graphs, guards and its record of which sizes changed per code object. A copy of the
    code object per (mode, cache, kind) keeps the calls of one kind together: their first shape
    compiles a static graph, a second shape of the same kind one graph with symbolic sizes (automatic
    dynamic shapes) that every later shape reuses, and a full call's shape never makes a partial
    call's graph dynamic. The model is an argument (its parameters are graph inputs), so nothing
    compiled keeps a model alive, and models of the same architecture share graphs.
    """
    code = _hidden_states.__code__
    code = code.replace(co_name=f"{code.co_name}_{mode}_{cache}_{kind}".replace("-", "_"))
    fn = types.FunctionType(code, _hidden_states.__globals__, code.co_name)
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=None)


class ModelCall:
    """Runs ``model(...).hidden_states`` for the loop, eagerly or compiled.

    Args:
        model: the backbone or multimodal model (see generate.py).
        mode: ``none``, ``default`` or ``reduce-overhead`` (COMPILE_MODES).
        cache: the sampler's cache mode (graphs are kept per cache mode, see `_compiled`).
    """

    def __init__(self, model: DiffusionModel, mode: str = "none", cache: str = "none"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode '{mode}' ({', '.join(COMPILE_MODES)})")
        self.model, self.mode, self.cache_mode = model, mode, cache
        self.graphs = mode == "reduce-overhead"

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: KVCache | None,
        cache_start: int | torch.Tensor,
        media: Media | None,
        partial: bool = False,
    ) -> torch.Tensor:
        """(rows, n, D) hidden states; a cache passed here is filled already, or None.

        `partial`: the inputs are the positions a cache recomputes, not the whole canvas.
        """
        if self.mode == "none":
            return _hidden_states(self.model, input_ids, attention_mask, position_ids, cache, cache_start, media)
        if self.graphs:
            # Each call starts a new CUDA-graph generation: the loop is done with the previous output.
            torch.compiler.cudagraph_mark_step_begin()
        fn = _compiled(self.mode, self.cache_mode, "partial" if partial else "full")
        return fn(self.model, input_ids, attention_mask, position_ids, cache, cache_start, media)

    def fill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: KVCache,
        media: Media | None,
    ) -> torch.Tensor:
        """The eager forward over the whole canvas that fills the empty `cache` (allocates its buffers)."""
        hidden = _hidden_states(self.model, input_ids, attention_mask, position_ids, cache, 0, media)
        if self.graphs:
            outputs = [] if cache.outputs is None else [cache.outputs]  # Dream's shifted-output store
            for t in (*cache.keys, *cache.values, *outputs):
                torch._dynamo.mark_static_address(t, guard=False)  # updated in place at a fixed address
            try:
                _STATIC_CACHES[self.model] = cache
            except TypeError:  # a model that cannot be weakly referenced keeps nothing
                pass
        return hidden

    def reusable_cache(self, rows: int, length: int, device: torch.device, dtype: torch.dtype | None) -> KVCache | None:
        """The filled cache kept from this model's last generation if its shape fits (CUDA graphs only)."""
        if not self.graphs:
            return None
        try:
            cache = _STATIC_CACHES.get(self.model)
        except TypeError:  # a model that cannot be weakly referenced keeps nothing
            return None
        if cache is None or not cache.filled:
            return None
        k = cache.keys[0]
        return cache if (k.shape[0], k.shape[2], k.device, k.dtype) == (rows, length, device, dtype) else None


def release_static_caches(model: Any | None = None) -> None:
    """Drop the KV caches kept for CUDA-graph reuse (of `model`, or of every model)."""
    if model is None:
        _STATIC_CACHES.clear()
    else:
        _STATIC_CACHES.pop(model, None)
