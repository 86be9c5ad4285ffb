"""ESM2 as a masked-diffusion backbone (DSM): the protein is the vocabulary, no projector.

The fair-esm ESM2 body (token dropout off, encoders/protein.py) with DSM's LM head: ESM's own head
(dense -> GELU -> LayerNorm -> decoder tied to the token embeddings, plus bias) followed by the soft
logit cap 30 * tanh(x / 30). It honours the `Backbone` contract where ESM can: token ids in, a
(B, L) padding mask (padding positions become ESM's padding token, which its attention ignores),
hidden states without the head for the loss. ESM counts rotary positions from the first token, so
batches must be right-padded (the protein tasks do so), and it has no key/value cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from multimodal.types import BackboneOutput


@dataclass
class DSMModelConfig:
    """ESM2 as the diffusion backbone (DSM mode) instead of the LLaDA backbone.

    Attributes:
        preset: ESM2 shape (esm2_tiny, esm2_small, esm2_t6_8m, ..., esm2_t33_650m) for random weights.
        weights: a local fair-esm checkpoint file, Hugging Face ESM folder or released DSM folder
            (GleghornLab/DSM_150, DSM_650, Synthyra/DSM_ppi_full) (overrides `preset`).
        logit_cap: DSM's soft cap c in c * tanh(logits / c); 0 disables it.
        max_seq_len: longest sequence accepted.
        token_dropout: ESM's token-dropout rescaling; None: as a released DSM folder's config says, else off.
    """

    preset: str = "esm2_tiny"
    weights: str | None = None
    logit_cap: float = 30.0
    max_seq_len: int = 1024
    token_dropout: bool | None = None


@dataclass(frozen=True)
class ESMBackboneConfig:
    """What the sampler and the trainer read from a backbone's config."""

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    max_seq_len: int = 1024


class ESMDiffusion(nn.Module):
    """DSM: ESM2 body + capped LM head behind the backbone contract."""

    def __init__(self, esm_model: nn.Module, name: str = "esm2", logit_cap: float = 30.0, max_seq_len: int = 1024):
        super().__init__()
        self.esm = esm_model
        self.logit_cap = logit_cap
        self.config = ESMBackboneConfig(
            name, esm_model.alphabet_size, esm_model.embed_dim, esm_model.num_layers, max_seq_len
        )

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.esm.lm_head(hidden_states)
        return self.logit_cap * torch.tanh(logits / self.logit_cap) if self.logit_cap else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: object | None = None,
        cache_start: int | torch.Tensor = 0,
        return_logits: bool = True,
        media: object = None,
    ) -> BackboneOutput:
        if cache is not None or not (isinstance(cache_start, int) and cache_start == 0):
            raise ValueError("the ESM2 backbone has no key/value cache (use sampler.cache 'none')")
        if inputs_embeds is not None or media is not None:
            raise ValueError("the ESM2 backbone takes token ids only")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds {self.config.max_seq_len} tokens")
        tokens = input_ids
        if attention_mask is not None:
            if attention_mask.dim() == 4 and attention_mask.shape[1:3] == (1, 1):
                attention_mask = attention_mask[:, 0, 0, :]  # a key-padding mask in SDPA layout
            if attention_mask.dim() != 2:
                raise ValueError("the ESM2 backbone takes a (B, L) padding mask only")
            tokens = torch.where(attention_mask.bool(), tokens, torch.full_like(tokens, self.esm.padding_idx))
        layers = self.esm.num_layers
        hidden = self.esm(tokens, repr_layers=[layers])["representations"][layers]  # after the final layer norm
        return BackboneOutput(logits=self.head(hidden) if return_logits else None, hidden_states=hidden)
