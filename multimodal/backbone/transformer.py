"""`LLaDABackbone`: the bidirectional masked-diffusion transformer behind the `Backbone` contract.

One forward covers every caller: token ids or spliced embeddings in; a (B, L) padding mask or an
arbitrary (B, L, L) / (B, 1, L, L) attention mask (block-causal, per-document); explicit position
ids (so left-padded prompts get the same rotary positions as unpadded ones); a key/value cache
with the canvas positions the inputs overwrite (Fast-dLLM prefix / dual caches, exact block
caches, see cache.py); and, for the loss, final hidden states without the vocabulary projection,
so the head can be applied to masked positions only. Module names equal the released LLaDA
checkpoint keys (see convert.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from multimodal.backbone.cache import KVCache
from multimodal.backbone.config import BACKBONE_PRESETS, BackboneConfig
from multimodal.backbone.layers import LLaDABlock, RMSNorm, rotary_cos_sin
from multimodal.types import BackboneOutput, Media


def attention_bias(attention_mask: torch.Tensor | None, q_len: int, k_len: int | None = None) -> torch.Tensor | None:
    """Turn a caller's attention mask into what SDPA takes.

    Args:
        attention_mask: None; (B, K) with 1 for real tokens and 0 for padding (padding keys are
            hidden from every query); or (B, Q, K) / (B, 1, Q, K) saying which query may attend
            which key (bool or 0/1), or a float additive bias of that shape; (B, 1, 1, K) is a key
            mask that is used as given (no check for all-ones, so no host synchronisation).
        q_len: number of queries Q (the inputs of this forward).
        k_len: number of keys K (the whole cached canvas when a cache is used; default Q).

    Returns:
        None (attend everywhere), or a boolean / float mask broadcastable to (B, H, Q, K).
    """
    k_len = q_len if k_len is None else k_len
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 2:
        if m.shape[1] != k_len:
            raise ValueError(f"attention_mask has length {m.shape[1]}, the keys have length {k_len}")
        if bool(m.all()):
            return None
        return m.bool()[:, None, None, :]  # (B, 1, 1, K): hide padding keys
    if m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[-1] != k_len or m.shape[-2] not in (1, q_len):
        shape = tuple(attention_mask.shape)
        raise ValueError(
            f"attention_mask must be (B, K), (B, Q, K) or (B, 1, Q, K) with Q={q_len}, K={k_len}, got {shape}"
        )
    return m if m.is_floating_point() else m.bool()


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions that skip padding: 0 at each sequence's first real token. (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class LLaDABackbone(nn.Module):
    """LLaDA transformer: embedding, N bidirectional blocks, final RMSNorm, untied output head.

    A family that changes the block sets `block_class` (and names its residual output projections in
    `residual_outputs`, initialised at 1/sqrt(2 n_layers) of the std).
    """

    block_class: type[nn.Module] = LLaDABlock
    residual_outputs: tuple[str, ...] = ("attn_out.weight", "ff_out.weight")

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(self.make_block(config, i) for i in range(config.n_layers))
        self.ln_f = RMSNorm(config.d_model, config.rms_norm_eps)
        self.ff_out = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    def make_block(self, config: BackboneConfig, layer: int) -> nn.Module:
        """Block `layer` (every layer alike here; LLaDA2 keeps its first layers dense)."""
        return self.block_class(config)

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layers); norm scales
        one; biases (the families that have them) zero."""
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(param)
            elif param.dim() < 2:
                nn.init.ones_(param)
            elif name.endswith(self.residual_outputs) and name.startswith("blocks."):
                nn.init.normal_(param, 0.0, out_std)
            else:
                nn.init.normal_(param, 0.0, std)

    @property
    def head_weight(self) -> torch.Tensor:
        """(V, D) output-head matrix (the input embedding when tied)."""
        return self.wte.weight if self.ff_out is None else self.ff_out.weight

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary scores of final hidden states: (..., D) -> (..., V)."""
        return hidden_states @ self.head_weight.t()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cache_start: int | torch.Tensor = 0,
        return_logits: bool = True,
        output_hidden_states: bool = False,
        media: Media | None = None,
    ) -> BackboneOutput:
        """Run the transformer.

        Args:
            input_ids: (B, L) token ids, or None when `inputs_embeds` is given.
            inputs_embeds: (B, L, D) embeddings (modalities spliced in), instead of `input_ids`.
            attention_mask: see `attention_bias`.
            position_ids: (B, L) rotary positions; None means 0..L-1 (the released LLaDA behaviour), or
                cache_start..cache_start+L-1 with a cache.
            cache: a `KVCache`. Empty: this forward runs over the whole canvas and fills it. Filled: the
                inputs are canvas positions [cache_start, cache_start + L); their keys and values
                overwrite the cache there and their queries attend over the whole cached canvas (then
                `attention_mask` is (B, canvas) or (B, L, canvas)).
            cache_start: first canvas position of the inputs when the cache is filled, or a (B, L)
                tensor of the canvas position of every input (any positions, e.g. dKV's delayed set).
            return_logits: False skips the output head and returns the final hidden states only
                (the loss applies the head to masked positions itself).
            output_hidden_states: also return the final hidden states (B, L, D) with the logits.
            media: none (the text backbone has no modality adapters: MultimodalDiffusionModel splices
                media into `inputs_embeds`); accepted so every model takes the same call (types.DiffusionModel).

        Returns:
            BackboneOutput with logits (B, L, V) and/or hidden_states (B, L, D).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if media is not None:
            raise ValueError("the text backbone takes no media (MultimodalDiffusionModel adds the adapters)")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"embeddings must be (B, L, {self.config.d_model}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        filled = cache is not None and cache.filled
        indexed = isinstance(cache_start, torch.Tensor)
        if not filled and (indexed or cache_start):
            raise ValueError("cache_start needs a filled cache")
        total = cache.length if filled else n
        if total > self.config.max_seq_len:
            raise ValueError(f"sequence length {total} exceeds the context of {self.config.max_seq_len} tokens")
        if position_ids is None and indexed:
            position_ids = cache_start
        elif position_ids is None:
            position_ids = torch.arange(cache_start, cache_start + n, device=x.device)[None].expand(b, n)
        elif position_ids.shape[-1] != n:
            raise ValueError(f"position_ids has length {position_ids.shape[-1]}, inputs have length {n}")
        cos, sin = rotary_cos_sin(position_ids, self.config.rotary_dim, self.config.rope_theta)
        mask = attention_bias(attention_mask, n, total)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, None if cache is None else (cache, i, cache_start))
        hidden = self.ln_f(x)
        logits = self.head(hidden) if return_logits else None
        keep_hidden = output_hidden_states or not return_logits
        return BackboneOutput(logits=logits, hidden_states=hidden if keep_hidden else None, cache=cache)


def create_backbone(
    config: BackboneConfig | str, device: torch.device | str | None = None, **overrides: object
) -> LLaDABackbone:
    """Build a backbone from a config or a preset name.

    On ``device="meta"`` nothing is allocated: the 8B shape can be inspected on a laptop.
    """
    if isinstance(config, str):
        from dataclasses import replace

        config = replace(BACKBONE_PRESETS.get(config), **overrides)
    network = NETWORKS.get(type(config), LLaDABackbone)
    if device is None:
        return network(config)
    with torch.device(device):
        return network(config)


# The network of each settings class that is not plain BackboneConfig (families register theirs: moe.py).
NETWORKS: dict[type, type[LLaDABackbone]] = {}
