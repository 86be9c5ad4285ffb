"""LLaDA2 (LLaDA2.0 / LLaDA2MoeModelLM): the block-diffusion MoE converted from the Ling AR models.

PAPERS.md section 7: LLaDA2.0 is BD3-LM's block diffusion at scale, trained from an autoregressive
checkpoint with a block-size warm-up / decay (`diffusion.block_schedule`) and complementary masking in
SFT (`diffusion.complementary`), and decoded block by block with block-causal attention. Its network,
as the released modelling file computes it:

* attention: one fused `query_key_value` projection (query heads, then key heads, then value heads; bias
  optional), per-head RMSNorm on queries and keys, rotary on the leading `partial_rotary_factor` of
  each head's dimensions (the rest passes), output `dense` (bias optional);
* the first `first_k_dense_replace` layers keep a dense SwiGLU MLP of `intermediate_size`; the others
  are a sparse MoE whose router is sigmoid (in float32) with an `expert_bias` added for the choice only:
  experts in `n_group` groups, the `topk_group` groups with the highest sum of their two best biased
  scores are eligible, the top-k eligible experts run, weighted by their unbiased scores normalised to
  sum 1 (k > 1) and multiplied by `routed_scaling_factor`; plus `num_shared_experts` shared experts as one
  SwiGLU of `moe_intermediate_size x num_shared_experts` that every token runs.

Experts run grouped as in LLaDA-MoE (moe.py). The expert bias is the aux-loss-free balancing of the
release (updated outside the gradient by the trainer that made it); this library loads and keeps it,
and refuses the softmax router's load-balancing and z-losses for this family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.backbone.config import BACKBONE_PRESETS
from multimodal.backbone.layers import LLaDABlock, RMSNorm
from multimodal.backbone.moe import LLaDAMoEBackbone, MoEBackboneConfig, SparseMoE
from multimodal.backbone.transformer import NETWORKS


@dataclass(frozen=True)
class LLaDA2Config(MoEBackboneConfig):
    """A LLaDA2 shape: MoEBackboneConfig's fields (`mlp_hidden` is each expert's width) and the module
    docstring's.

    Attributes:
        dense_hidden: SwiGLU width of the dense layers (the release's `intermediate_size`).
        first_dense_layers: leading layers with a dense MLP (`first_k_dense_replace`).
        shared_experts: shared experts (`num_shared_experts`; 0: none).
        n_group, topk_group: expert groups and how many of them a token may use.
        routed_scaling: factor on the routed experts' weights (`routed_scaling_factor`).
        rotary_fraction: share of each head's dimensions that rotary rotates (`partial_rotary_factor`).
        qkv_bias, out_bias: biases on the fused query / key / value projection and on the output one.
    """

    expert_bias: bool = True
    dense_hidden: int = 512
    first_dense_layers: int = 1
    shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0
    rotary_fraction: float = 1.0
    qkv_bias: bool = False
    out_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_experts % self.n_group or self.n_experts // self.n_group < 2:
            raise ValueError(f"{self.n_experts} experts do not split into {self.n_group} groups of 2 or more")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group must be in 1..n_group={self.n_group}, got {self.topk_group}")
        if self.topk_group * (self.n_experts // self.n_group) < self.experts_per_token:
            raise ValueError("topk_group groups hold fewer experts than experts_per_token")
        if self.load_balance_weight or self.router_z_weight:
            raise ValueError(
                "LLaDA2's router balances by its expert bias: load_balance_weight and router_z_weight must be 0"
            )
        if not 0 < self.rotary_fraction <= 1 or self.rotary_dim % 2:
            raise ValueError(f"rotary_fraction {self.rotary_fraction} must give an even number of rotated dimensions")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    def num_parameters(self) -> int:
        d, kv, e, f = self.d_model, self.kv_heads * self.head_dim, self.n_experts, self.mlp_hidden
        attention = d * d * 2 + d * kv * 2 + (d + 2 * kv if self.qkv_bias else 0) + (d if self.out_bias else 0)
        norms = 2 * d + 2 * self.head_dim
        dense = attention + norms + 3 * d * self.dense_hidden
        sparse = attention + norms + d * e + e * 3 * d * f + 3 * d * f * self.shared_experts
        head = 0 if self.tie_embeddings else self.vocab_size * d
        dense_layers = min(self.first_dense_layers, self.n_layers)
        return self.vocab_size * d + dense_layers * dense + (self.n_layers - dense_layers) * sparse + d + head

    def active_parameters(self) -> int:
        idle = self.n_experts - self.experts_per_token
        sparse_layers = self.n_layers - min(self.first_dense_layers, self.n_layers)
        return self.num_parameters() - sparse_layers * idle * 3 * self.d_model * self.mlp_hidden

    def mlp_flops_per_token(self) -> int:  # averaged over the layers
        d, sparse = self.d_model, self.n_layers - min(self.first_dense_layers, self.n_layers)
        moe = 2 * ((self.experts_per_token + self.shared_experts) * 3 * d * self.mlp_hidden + d * self.n_experts)
        dense = 2 * 3 * d * self.dense_hidden
        return (sparse * moe + (self.n_layers - sparse) * dense) // self.n_layers


class GroupedSigmoidMoE(SparseMoE):
    """LLaDA2's routed experts: sigmoid scores, group-limited top-k on the biased scores (module docstring)."""

    def __init__(self, config: LLaDA2Config):
        super().__init__(config)
        self.n_group, self.topk_group, self.scaling = config.n_group, config.topk_group, config.routed_scaling

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.router.weight.float())  # (N, E) in float32
        scores = torch.sigmoid(logits)
        biased = scores + self.expert_bias
        n, e = biased.shape
        groups = biased.view(n, self.n_group, -1).topk(2, dim=-1).values.sum(-1)  # (N, n_group)
        keep = torch.zeros_like(groups).scatter_(1, groups.topk(self.topk_group, dim=-1, sorted=False).indices, 1.0)
        eligible = keep[..., None].expand(n, self.n_group, e // self.n_group).reshape(n, e).bool()
        experts = biased.masked_fill(~eligible, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return logits, weights * self.scaling, experts


class SwiGLU(nn.Module):
    """A SwiGLU MLP with the dense block's names (ff_proj gated, up_proj, ff_out)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.ff_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))


class LLaDA2Block(LLaDABlock):
    """LLaDA2's attention (q / k norms, optional biases, partial rotary through the tables) around either
    a dense SwiGLU (`sparse` false) or routed plus shared experts."""

    def __init__(self, config: LLaDA2Config, sparse: bool):
        self.sparse = sparse
        super().__init__(config)
        d, kv = config.d_model, config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv, bias=config.qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.out_bias)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def build_mlp(self, config: LLaDA2Config) -> None:
        if not self.sparse:
            self.ff_proj = nn.Linear(config.d_model, config.dense_hidden, bias=False)
            self.up_proj = nn.Linear(config.d_model, config.dense_hidden, bias=False)
            self.ff_out = nn.Linear(config.dense_hidden, config.d_model, bias=False)
            return
        self.moe = GroupedSigmoidMoE(config)
        shared = config.mlp_hidden * config.shared_experts
        self.shared = SwiGLU(config.d_model, shared) if shared else None

    def normalise_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sparse:
            return super().mlp(x)
        h = self.ff_norm(x)
        out = self.moe(h)
        return out if self.shared is None else out + self.shared(h)


class LLaDA2Backbone(LLaDAMoEBackbone):
    """The LLaDA backbone with LLaDA2's layers: dense first, then routed plus shared experts."""

    residual_outputs = ("attn_out.weight", "moe.down_proj", "ff_out.weight")

    def make_block(self, config: LLaDA2Config, layer: int) -> nn.Module:
        return LLaDA2Block(config, sparse=layer >= config.first_dense_layers)


NETWORKS[LLaDA2Config] = LLaDA2Backbone

# Tests and CPU demos: llada_tiny's width, one dense layer then three MoE layers of 8 experts in 2 groups
# (top-2 from 1 group), one shared expert, rotary on half of each head.
BACKBONE_PRESETS.register(
    "llada2_tiny",
    LLaDA2Config(
        name="llada2_tiny",
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=96,
        vocab_size=256,
        max_seq_len=1024,
        rope_theta=600000.0,
        rms_norm_eps=1e-6,
        n_experts=8,
        experts_per_token=2,
        dense_hidden=384,
        first_dense_layers=1,
        shared_experts=1,
        n_group=2,
        topk_group=1,
        routed_scaling=2.5,
        rotary_fraction=0.5,
    ),
)
