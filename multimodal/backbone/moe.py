"""LLaDA-MoE: the LLaDA masked-diffusion transformer with every MLP a sparse mixture of experts.

LLaDA-MoE-7B-A1B (PAPERS.md section 7) keeps LLaDA's bidirectional pre-norm blocks and changes two
things: each block's feed-forward part is a router over `n_experts` SwiGLU experts of width
`mlp_hidden` of which `experts_per_token` run per token, and queries and keys pass a per-head RMSNorm
(over head_dim) before rotary. Routing, as the released modelling file computes it: router logits
from a bias-free linear (in the model dtype), softmax over all experts in float32, the optional
`expert_bias` buffer added to the probabilities, top-k of the sum, and the kept values used as the
weights as they are (no renormalisation; the config's `norm_topk_prob` is ignored by the release).

Experts are stored stacked, (E, F, D) / (E, D, F), and run grouped: the (token, expert) pairs are
sorted by expert and each expert multiplies its rows in one matmul, so the cost is E small matmuls
per block whatever the batch, not a Python loop over tokens (the release loops over experts with a
`torch.where` each, the same arithmetic).

Training may add Switch / Mixtral's load-balancing loss (E x sum_e f_e P_e over the forward's
non-padding tokens of all blocks, f_e the fraction of top-k slots routed to e and P_e the mean router
probability, as the release's `load_balancing_loss_func`) and ST-MoE's router z-loss (mean squared
logsumexp of the router logits), weighted by `load_balance_weight` / `router_z_weight` (the paper:
0.01 and 0.001). The released modelling file cannot compute them: its decoder layers never return
the router logits its `output_router_logits` asks for. Both are off in the presets.

Everything else (caches, position ids, attention masks, the hidden-states-only path, the head) is
the dense backbone's, so every sampler, cache, the server, LoRA on the attention projections, FSDP
(one unit per block: LLaDAMoEBlock is an LLaDABlock) and the multimodal model take it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.backbone.config import BACKBONE_PRESETS, BackboneConfig
from multimodal.backbone.layers import LLaDABlock, RMSNorm
from multimodal.backbone.transformer import NETWORKS, LLaDABackbone
from multimodal.types import BackboneOutput


@dataclass(frozen=True)
class MoEBackboneConfig(BackboneConfig):
    """A LLaDA-MoE shape (module docstring); `mlp_hidden` is each expert's SwiGLU width.

    Attributes:
        n_experts: routed experts per block (the release: 64).
        experts_per_token: experts each token runs (top-k; the release: 8).
        qk_norm: per-head RMSNorm on queries and keys before rotary (the release: true).
        expert_bias: keep an `expert_bias` buffer added to the router probabilities (the release's
            `moe_router_enable_expert_bias`; loaded from a checkpoint, never trained here).
        load_balance_weight: weight of the load-balancing loss in training (0: not computed).
        router_z_weight: weight of the router z-loss in training (0: not computed).
    """

    n_experts: int = 8
    experts_per_token: int = 2
    qk_norm: bool = True
    expert_bias: bool = False
    load_balance_weight: float = 0.0
    router_z_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.experts_per_token <= self.n_experts:
            raise ValueError(
                f"experts_per_token must be in 1..n_experts={self.n_experts}, got {self.experts_per_token}"
            )
        if self.load_balance_weight < 0 or self.router_z_weight < 0:
            raise ValueError("load_balance_weight and router_z_weight must be >= 0")

    def num_parameters(self) -> int:
        d, f, kv, e = self.d_model, self.mlp_hidden, self.kv_heads * self.head_dim, self.n_experts
        norms = 2 * d + (2 * self.head_dim if self.qk_norm else 0)
        per_block = d * d * 2 + d * kv * 2 + d * e + e * 3 * d * f + norms
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_block + d + head

    def active_parameters(self) -> int:
        """Parameters one token uses: the total less the experts it is not routed to."""
        idle = self.n_experts - self.experts_per_token
        return self.num_parameters() - self.n_layers * idle * 3 * self.d_model * self.mlp_hidden

    def mlp_flops_per_token(self) -> int:
        d, e = self.d_model, self.n_experts
        return 2 * (self.experts_per_token * 3 * d * self.mlp_hidden + d * e)  # experts run + router


class SparseMoE(nn.Module):
    """Router and stacked SwiGLU experts of one block (module docstring)."""

    def __init__(self, config: MoEBackboneConfig):
        super().__init__()
        d, f, e = config.d_model, config.mlp_hidden, config.n_experts
        self.top_k = config.experts_per_token
        self.router = nn.Linear(d, e, bias=False)
        self.gate_proj = nn.Parameter(torch.empty(e, f, d))  # SiLU-gated branch, one (F, D) per expert
        self.up_proj = nn.Parameter(torch.empty(e, f, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, f))
        if config.expert_bias:
            self.register_buffer("expert_bias", torch.zeros(e))
        else:
            self.expert_bias = None
        self.record = False  # keep this forward's router logits for the training losses
        self.router_logits: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (N, E), and the top-k weights (N, k) in x's dtype and expert ids (N, k)."""
        logits = self.router(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            probs = probs + self.expert_bias.float()
        weights, experts = probs.topk(self.top_k, dim=-1)
        return logits, weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, weights, experts = self.route(x)
        if self.record:
            self.router_logits = logits
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)  # (token, slot) pairs grouped by expert
        token = order // self.top_k
        counts = torch.bincount(flat, minlength=self.gate_proj.shape[0]).tolist()
        rows = x[token]
        outputs, start = [], 0
        for e, count in enumerate(counts):
            if count:
                h = rows[start : start + count]
                h = F.silu(h @ self.gate_proj[e].t()) * (h @ self.up_proj[e].t())
                outputs.append(h @ self.down_proj[e].t())
                start += count
        y = torch.cat(outputs).to(weights.dtype) * weights.reshape(-1)[order, None]  # summed in the weights' dtype
        out = torch.zeros(x.shape, dtype=weights.dtype, device=x.device).index_add_(0, token, y)
        return out.to(x.dtype).reshape(shape)


class LLaDAMoEBlock(LLaDABlock):
    """A LLaDA block with per-head query / key norms and a sparse MoE in place of the MLP."""

    def __init__(self, config: MoEBackboneConfig):
        super().__init__(config)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def build_mlp(self, config: MoEBackboneConfig) -> None:
        self.moe = SparseMoE(config)

    def normalise_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.q_norm is None:
            return q, k
        return self.q_norm(q), self.k_norm(k)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(self.ff_norm(x))


def load_balancing_loss(logits: list[torch.Tensor], top_k: int, tokens: torch.Tensor | None) -> torch.Tensor:
    """E x sum_e f_e P_e over the tokens of all blocks (module docstring).

    Args:
        logits: per block, (N, E) router logits of the same N tokens.
        top_k: experts per token.
        tokens: (N,) 1 for tokens that count (padding 0), or None for all.
    """
    stacked = torch.cat(logits)  # (layers * N, E)
    probs = F.softmax(stacked, dim=-1, dtype=torch.float32)
    chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, stacked.shape[-1]).float()  # (M, k, E)
    w = torch.ones(stacked.shape[0], device=stacked.device) if tokens is None else tokens.float().repeat(len(logits))
    fraction = (chosen * w[:, None, None]).sum(0) / w.sum()  # (k, E)
    mean_prob = (probs * w[:, None]).sum(0) / w.sum()  # (E,)
    return (fraction * mean_prob).sum() * stacked.shape[-1]


def router_z_loss(logits: list[torch.Tensor], tokens: torch.Tensor | None) -> torch.Tensor:
    """Mean over blocks and counted tokens of logsumexp(router logits)^2."""
    z = torch.stack([torch.logsumexp(x.float(), dim=-1).square() for x in logits])  # (layers, N)
    if tokens is None:
        return z.mean()
    w = tokens.float()
    return (z * w).sum() / (w.sum() * len(logits))


class LLaDAMoEBackbone(LLaDABackbone):
    """The LLaDA backbone with LLaDA-MoE blocks; training adds the configured router losses."""

    block_class = LLaDAMoEBlock
    residual_outputs = ("attn_out.weight", "moe.down_proj")

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs) -> BackboneOutput:
        c = self.config
        record = self.training and torch.is_grad_enabled() and (c.load_balance_weight or c.router_z_weight) > 0
        routers = [block.moe for block in self.blocks if hasattr(block, "moe")]
        for moe in routers:
            moe.record = record
        out = super().forward(input_ids, **kwargs)
        if not record:
            return out
        logits = [moe.router_logits for moe in routers]
        for moe in routers:
            moe.record, moe.router_logits = False, None
        mask = kwargs.get("attention_mask")
        tokens = mask.reshape(-1) if mask is not None and mask.dim() == 2 else None  # padding does not count
        aux = torch.zeros((), device=logits[0].device)
        if c.load_balance_weight:
            aux = aux + c.load_balance_weight * load_balancing_loss(logits, c.experts_per_token, tokens)
        if c.router_z_weight:
            aux = aux + c.router_z_weight * router_z_loss(logits, tokens)
        return replace(out, aux_loss=aux)


NETWORKS[MoEBackboneConfig] = LLaDAMoEBackbone

for _preset in (
    # Tests and CPU demos: llada_tiny's attention and, per token, its MLP compute (2 experts of 192 =
    # its SwiGLU of 384), from 8 experts: 2.7M parameters, 0.92M active per token (llada_tiny: 0.92M).
    MoEBackboneConfig(
        name="llada_tiny_moe",
        d_model=128,
        n_layers=4,
        n_heads=4,
        mlp_hidden=192,
        vocab_size=256,
        max_seq_len=1024,
        rope_theta=50000.0,
        n_experts=8,
        experts_per_token=2,
    ),
    # The released LLaDA-MoE-7B-A1B shape (PAPERS.md section 7): 7.4B parameters, 1.7B active per token
    # (1.1B without the embedding and the head); vocabulary as LLaDA2's tokenizer (mask 156895), a loaded
    # folder's config.json decides.
    MoEBackboneConfig(
        name="llada_moe_7b",
        d_model=2048,
        n_layers=16,
        n_heads=16,
        mlp_hidden=1024,
        vocab_size=157184,
        max_seq_len=8192,
        rope_theta=50000.0,
        n_experts=64,
        experts_per_token=8,
    ),
):
    BACKBONE_PRESETS.register(_preset.name, _preset)
