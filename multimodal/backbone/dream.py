"""Dream: a Qwen2-layout transformer made bidirectional, whose output at i-1 scores position i.

Dream 7B (PAPERS.md section 7) starts from Qwen2.5-7B: biases on the query, key and value projections
(none elsewhere), RMSNorm (eps 1e-6), full rotary with base 1e6, grouped-query attention, a separate
lm_head; the attention is made bidirectional. It keeps the autoregressive model's role for each
output: the network's output at position i-1 scores the token at position i, and position 0 reuses
its own output (so a prompt has at least one token). The release applies that shift outside the
network, in `diffusion_generate` and its training code; here the backbone applies it to its final
hidden states before the head, so every caller (the objective, the ELBO, every sampler and cache,
the server, the multimodal model) sees logits at i that score position i, with no change of its own.

Caches: a partial forward over canvas positions [s, e) needs the final hidden state of s-1, which it
does not compute. The backbone keeps every position's final hidden state in the cache (`KVCache.outputs`)
as last computed, and takes position s-1's from there: exact with the block-causal exact cache (an
earlier block never changes), and the same approximation as the keys and values under Fast-dLLM's
prefix and dual caches (refreshed at each block's first step).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from multimodal.backbone.cache import KVCache
from multimodal.backbone.config import BACKBONE_PRESETS, BackboneConfig
from multimodal.backbone.layers import LLaDABlock
from multimodal.backbone.transformer import NETWORKS, LLaDABackbone
from multimodal.types import BackboneOutput


@dataclass(frozen=True)
class DreamConfig(BackboneConfig):
    """A Dream shape: BackboneConfig's fields, with biases on q / k / v (`qkv_bias`, the release: true)."""

    qkv_bias: bool = True

    def num_parameters(self) -> int:
        biases = (self.d_model + 2 * self.kv_heads * self.head_dim) if self.qkv_bias else 0
        return super().num_parameters() + self.n_layers * biases


class DreamBlock(LLaDABlock):
    """A LLaDA block with Qwen2's biased query / key / value projections."""

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        d, kv = config.d_model, config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv, bias=config.qkv_bias)


def shift_outputs(hidden: torch.Tensor, cache: KVCache | None, start: int | torch.Tensor, filled: bool) -> torch.Tensor:
    """Dream's one-position shift of (B, n, D) final hidden states: out[i] = h[i - 1], out[0] = h[0].

    Without a cache the inputs are the whole row. With one, `hidden` belongs to canvas positions
    [start, start + n) (or the (B, n) positions `start`); they are written into `cache.outputs` and
    each position reads its predecessor's from there (module docstring; decoding only: no gradient).
    """
    if cache is None:
        return torch.cat((hidden[:, :1], hidden[:, :-1]), dim=1)
    b, n, d = hidden.shape
    if not filled:  # the filling forward: the whole canvas
        cache.outputs = hidden.detach().clone()
        positions = torch.arange(n, device=hidden.device).expand(b, n)
    elif isinstance(start, torch.Tensor):
        positions = start
        cache.outputs.scatter_(1, positions[..., None].expand(-1, -1, d), hidden.detach())
    else:
        positions = torch.arange(start, start + n, device=hidden.device).expand(b, n)
        cache.outputs[:, start : start + n] = hidden.detach()
    before = (positions - 1).clamp_min(0)  # position 0 reads its own output
    return cache.outputs.gather(1, before[..., None].expand(-1, -1, d)).to(hidden.dtype)


class DreamBackbone(LLaDABackbone):
    """The LLaDA backbone with Dream's blocks and its logit shift (module docstring)."""

    block_class = DreamBlock

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs) -> BackboneOutput:
        cache = kwargs.get("cache")
        filled = cache is not None and cache.filled
        want_logits = kwargs.pop("return_logits", True)
        keep_hidden = kwargs.pop("output_hidden_states", False)
        out = super().forward(input_ids, return_logits=False, **kwargs)
        hidden = shift_outputs(out.hidden_states, cache, kwargs.get("cache_start", 0), filled)
        logits = self.head(hidden) if want_logits else None
        return replace(out, logits=logits, hidden_states=hidden if keep_hidden or not want_logits else None)


NETWORKS[DreamConfig] = DreamBackbone

for _preset in (
    # Tests and CPU demos: llada_tiny's shape in Dream's layout (GQA 4/2, biases, base 1e6): 0.9M parameters.
    DreamConfig(
        name="dream_tiny",
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=384,
        vocab_size=256,
        max_seq_len=1024,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
    ),
    # The released Dream 7B (Qwen2.5-7B's shape): 7.6B parameters; mask 151666, pad / EOS 151643.
    DreamConfig(
        name="dream_7b",
        d_model=3584,
        n_layers=28,
        n_heads=28,
        n_kv_heads=4,
        mlp_hidden=18944,
        vocab_size=152064,
        max_seq_len=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
    ),
):
    BACKBONE_PRESETS.register(_preset.name, _preset)
