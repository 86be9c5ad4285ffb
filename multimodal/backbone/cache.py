"""Key/value caches for decoding (Fast-dLLM prefix and dual caches, exact block caches, dKV delayed caches).

A `KVCache` holds, per layer, the rotated keys and the values of every position of a canvas of
length L: (B, H_kv, L, head_dim). It is filled by a full forward (an empty cache passed to the
backbone) and then updated by partial forwards: the inputs are the canvas positions
[start, start + n) (or any positions, given as a (B, n) tensor), their keys and values overwrite
those positions in the cache, and their queries attend over all L cached positions. Which
positions are recomputed, and how often the whole cache is refreshed, is the sampler's business
(prefix cache: everything from the current block on; dual cache: the current block only; both
refreshed once per block; delayed cache: the positions still masked or decoded at the previous
step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Per-layer keys and values of one canvas.

    Attributes:
        keys, values: one (B, H_kv, L, head_dim) tensor per layer once filled; empty before.
        outputs: (B, L, D) final hidden states of every position as last computed, for a family whose
            output at i reads position i-1's (Dream, backbone/dream.py); None for the others.
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    outputs: torch.Tensor | None = None

    @property
    def filled(self) -> bool:
        return bool(self.keys)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def clear(self) -> None:
        self.keys.clear()
        self.values.clear()
        self.outputs = None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H_kv, n, hd) keys/values of `layer` and return the layer's whole cache.

        `start` is the first canvas position of a contiguous slice [start, start + n), or a (B, n)
        tensor of canvas positions, one row per sequence (repeated positions must carry equal
        values). On an empty layer (the filling forward) `start` must be 0 and the inputs become
        the cache.
        """
        if layer == len(self.keys):
            if isinstance(start, torch.Tensor) or start != 0:
                raise ValueError("an empty cache must be filled by a forward over the whole canvas (start 0)")
            self.keys.append(k)
            self.values.append(v)
            return k, v
        if isinstance(start, torch.Tensor):
            index = start[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, H_kv, n, hd)
            self.keys[layer].scatter_(2, index, k)
            self.values[layer].scatter_(2, index, v)
            return self.keys[layer], self.values[layer]
        n = k.shape[2]
        if start < 0 or start + n > self.keys[layer].shape[2]:
            raise ValueError(f"positions [{start}, {start + n}) fall outside the cached canvas of {self.length}")
        self.keys[layer][:, :, start : start + n] = k
        self.values[layer][:, :, start : start + n] = v
        return self.keys[layer], self.values[layer]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (when finished sequences leave a batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        if self.outputs is not None:
            self.outputs = self.outputs[rows]
