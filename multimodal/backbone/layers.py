"""Building blocks of the LLaDA transformer: RMSNorm, rotary embeddings, and one bidirectional block.

Numerics follow the released LLaDA modelling code: RMSNorm statistics in float32, rotary angles and
the rotation itself in float32 (then cast back), rotate-half (not interleaved) pairing, SwiGLU as
``ff_out(silu(ff_proj(x)) * up_proj(x))``, no biases anywhere. Parameter names equal the checkpoint's
(``attn_norm``, ``q_proj``, ..., ``ff_out``) so conversion is a prefix table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.backbone.cache import KVCache
from multimodal.backbone.config import BackboneConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale and no bias; statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(dtype) * self.weight


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for the given positions.

    Args:
        position_ids: (B, L) or (L,) integer positions.
        head_dim: per-head width (all of it is rotated).
        theta: rotary base.

    Returns:
        cos, sin: (B, 1, L, head_dim) float32, ready to broadcast over heads.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    )
    angles = position_ids.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, L, head_dim)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, hd) queries or keys in float32, halves paired as (x1, x2) -> (-x2, x1); tables
    narrower than hd rotate the leading dimensions only (partial rotary) and pass the rest."""
    if cos.shape[-1] < x.shape[-1]:
        d = cos.shape[-1]
        return torch.cat((apply_rotary(x[..., :d], cos, sin), x[..., d:]), dim=-1)
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class LLaDABlock(nn.Module):
    """Pre-norm transformer block with full (bidirectional) attention and a SwiGLU MLP.

    Other families change one piece by overriding it: `build_mlp` / `mlp` (the feed-forward part, e.g.
    LLaDA-MoE's routed experts) and `normalise_qk` (per-head query / key norms before rotary).
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        d, kv = config.d_model, config.kv_heads * config.head_dim
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.build_mlp(config)

    def build_mlp(self, config: BackboneConfig) -> None:
        d = config.d_model
        self.ff_proj = nn.Linear(d, config.mlp_hidden, bias=False)  # SiLU-gated branch
        self.up_proj = nn.Linear(d, config.mlp_hidden, bias=False)  # multiplier branch
        self.ff_out = nn.Linear(config.mlp_hidden, d, bias=False)  # down projection

    def normalise_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, n, hd) queries and keys before rotary: unchanged in dense LLaDA."""
        return q, k

    def attention(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        kv: tuple[KVCache, int, int | torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Self-attention of (B, n, D) inputs; `attn_mask` is boolean (True = may attend) or additive.

        With `kv = (cache, layer, start)` the inputs are canvas positions [start, start + n): their keys
        and values are written into the cache and the queries attend over the whole cached canvas.
        """
        b, n, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, n, hd)
        k = self.k_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, n, hd)
        v = self.v_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.normalise_qk(q, k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is not None:
            cache, layer, start = kv
            k, v = cache.update(layer, k, v, start)  # (B, Hkv, L, hd): the whole canvas
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=False, enable_gqa=self.kv_heads != self.n_heads
        )
        return self.attn_out(out.transpose(1, 2).reshape(b, n, -1))  # (B, L, D)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ff_norm(x)
        return self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        kv: tuple[KVCache, int, int | torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attention(x, cos, sin, attn_mask, kv)
        return x + self.mlp(x)
