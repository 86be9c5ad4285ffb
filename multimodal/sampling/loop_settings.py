"""What one model call of the decoding loop shares: block length, KV cache, attention, guidance, compile.

A commit policy (base.py's `SamplerConfig` and its subclasses) says which masked positions a row
commits; these settings say how the canvas goes through the model, and every row of one call has the
same: the continuous batch of a server (batching.py) decodes requests with their own policies, step
counts and answer lengths in one call, so a request may set its policy but never these (they are the
server's). `SamplerConfig` carries them too, so a run's YAML keeps one flat ``sampler:`` section and
configs saved beside older checkpoints load unchanged; the loop's layers (forward.py, caches.py,
batching.py, the server) take a `LoopSettings` and read nothing else. `LOOP_FIELDS` names them, for
whoever must keep them apart from a request's settings.

The names of caches and compile modes are checked here, once, against their registries.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from multimodal.registry import suggest
from multimodal.sampling.caches import CACHES
from multimodal.sampling.compiled import COMPILE_MODES


class SamplerError(ValueError):
    """A decoding request whose shapes cannot work (reported as one line by the CLI)."""


@dataclass
class LoopSettings:
    """Decoding settings every row of one model call shares.

    Attributes:
        block_length: semi-autoregressive block size (== gen_length: one block).
        cfg_scale: classifier-free guidance scale s (logits = u + (s + 1)(c - u)); 0 disables it.
        cache: a registered cache policy (caches.py): ``none``, Fast-dLLM ``prefix`` or ``dual``
            (approximate, refreshed once per block), ``block`` (exact; needs block-causal attention) or
            dKV-style ``delayed``.
        refresh_every: with the delayed cache, a full forward refreshes the cache every this many steps.
        attention: ``full`` (bidirectional, LLaDA) or ``block_causal`` (a position sees the prompt,
            earlier blocks and its own block).
        compile: run the step's model call through ``torch.compile``: ``none`` (eager), ``default``
            (Inductor kernels) or ``reduce-overhead`` (the same replayed as CUDA graphs on CUDA; the KV
            cache is kept per model for the next generation, one generation at a time). The first
            generation compiles (tens of seconds), as does the first with a new prompt width or batch
            size (once: sizes then become symbolic). See compiled.py.
    """

    block_length: int = 128
    cfg_scale: float = 0.0
    cache: str = "none"
    attention: Literal["full", "block_causal"] = "full"
    refresh_every: int = 8
    compile: Literal["none", "default", "reduce-overhead"] = "none"

    def __post_init__(self) -> None:
        if self.block_length <= 0:
            raise SamplerError(f"block_length must be positive, got {self.block_length}")
        if self.cache not in CACHES:
            known = CACHES.names()
            raise SamplerError(f"unknown cache '{self.cache}'{suggest(self.cache, known)} ({', '.join(known)})")
        if self.refresh_every <= 0:
            raise SamplerError(f"refresh_every must be positive, got {self.refresh_every}")
        if self.attention not in ("full", "block_causal"):
            raise SamplerError(f"unknown attention '{self.attention}' (full, block_causal)")
        if self.compile not in COMPILE_MODES:
            raise SamplerError(f"unknown compile mode '{self.compile}' ({', '.join(COMPILE_MODES)})")
        if CACHES.get(self.cache).needs_block_causal and self.attention != "block_causal":
            raise SamplerError(f"cache '{self.cache}' is exact only with attention 'block_causal'; use prefix or dual")

    @property
    def loop(self) -> LoopSettings:
        """These settings alone (a sampler config carries them among its policy's)."""
        return LoopSettings(**{name: getattr(self, name) for name in LOOP_FIELDS})


LOOP_FIELDS = tuple(f.name for f in fields(LoopSettings))
