"""`MultimodalDiffusionModel`: the shared backbone plus modality adapters spliced at placeholder tokens.

Each modality has a placeholder token id; the data pipeline expands one placeholder per input into
as many placeholder tokens as the adapter produces embeddings, so a row's placeholder positions,
taken in order, receive that row's features in order (several images per sample simply follow one
another). The model embeds the token ids, overwrites the placeholder positions with the projected
features, and runs the backbone on the embeddings. Placeholders are prompt positions: they are
never maskable, and the backbone's cache contract is unchanged (partial forwards over answer
positions carry no placeholders).

With classifier-free guidance the sampler runs 2B rows (conditional, then unconditional with the
prompt masked): the unconditional rows hold no placeholder tokens, so features of B rows splice
into the conditional rows only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from multimodal.backbone.transformer import LLaDABackbone
from multimodal.types import BackboneOutput, Media, MediaFeatures, MediaItems, ModalityIO


class MultimodalDiffusionModel(nn.Module):
    """Backbone + per-modality adapters.

    Args:
        backbone: the LLaDA-style backbone.
        adapters: modality name -> module mapping preprocessed inputs (B, ...) to (B, N, D).
        placeholder_ids: modality name -> token id of its placeholder.
    """

    def __init__(self, backbone: LLaDABackbone, adapters: dict[str, nn.Module], placeholder_ids: dict[str, int]):
        super().__init__()
        missing = set(adapters) - set(placeholder_ids)
        if missing:
            raise ValueError(f"no placeholder token id for modalities: {', '.join(sorted(missing))}")
        self.backbone = backbone
        self.adapters = nn.ModuleDict(adapters)
        self.placeholder_ids = dict(placeholder_ids)

    @property
    def config(self):
        return self.backbone.config

    @property
    def head_weight(self) -> torch.Tensor:
        return self.backbone.head_weight

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.backbone.head(hidden_states)

    def modality_io(self) -> dict[str, ModalityIO]:
        """What tasks need to lay out each modality: placeholder id, token count and preprocessing."""
        return {
            name: ModalityIO(name, self.placeholder_ids[name], adapter.num_tokens, adapter.encoder.preprocess)
            for name, adapter in self.adapters.items()
        }

    def encode(
        self, modality_inputs: dict[str, torch.Tensor], modality_masks: dict[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """Run each adapter once over the items present (computed once per generation).

        Args:
            modality_inputs: modality -> (B, K, ...) up to K items per row (images, clips, ...).
            modality_masks: modality -> (B, K) bool, which items exist (default: all).

        Returns:
            features: modality -> (B, K * N, D), each row's items one after another (N = the most
                tokens any item gives; shorter items are padded);
            feature_masks: modality -> (B, K * N) bool, which feature vectors are real;
            extras: modality -> the towers' auxiliary outputs for the items present, plus ``rows``,
                the batch row of each item.
        """
        masks = modality_masks or {}
        features, valid, extras = {}, {}, {}
        for name, inputs in modality_inputs.items():
            if name not in self.adapters:
                raise KeyError(f"no adapter for modality '{name}' (have: {', '.join(self.adapters) or 'none'})")
            b, k = inputs.shape[:2]
            present = masks.get(name)
            present = torch.ones(b, k, dtype=torch.bool, device=inputs.device) if present is None else present.bool()
            items, item_valid, aux = self.adapters[name](inputs[present])  # (n_items, N, D), (n_items, N)
            n, d = items.shape[1], items.shape[2]
            out = items.new_zeros(b, k, n, d)
            out[present] = items
            ok = item_valid.new_zeros(b, k, n)
            ok[present] = item_valid
            features[name], valid[name] = out.reshape(b, k * n, d), ok.reshape(b, k * n)
            if aux:
                extras[name] = {**aux, "rows": present.nonzero(as_tuple=True)[0]}
        return features, valid, extras

    def splice(
        self,
        input_ids: torch.Tensor,
        features: dict[str, torch.Tensor],
        feature_masks: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token embeddings (B, L, D) with each modality's features written at its placeholder positions.

        Args:
            input_ids: (B, L) ids with placeholder tokens.
            features: modality -> (B', N, D) features, B' <= B (rows beyond B' receive none).
            feature_masks: modality -> (B', N) bool, which feature vectors are real (default: all).
        """
        embeds = self.backbone.embed(input_ids)
        masks = feature_masks or {}
        for name, feats in features.items():
            where = input_ids == self.placeholder_ids[name]  # (B, L)
            valid = masks.get(name)
            valid = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device) if valid is None else valid
            if feats.shape[0] < input_ids.shape[0]:  # guidance rows: no features
                pad = input_ids.shape[0] - feats.shape[0]
                feats = torch.cat([feats, feats.new_zeros(pad, *feats.shape[1:])])
                valid = torch.cat([valid, valid.new_zeros(pad, valid.shape[1])])
            have, need = valid.sum(1), where.sum(1)
            if not torch.equal(have, need):
                raise ValueError(
                    f"{name}: rows hold {need.tolist()} placeholder tokens but {have.tolist()} feature "
                    "vectors; expand each placeholder to the adapter's token count"
                )
            embeds = embeds.masked_scatter(where[..., None], feats[valid].to(embeds.dtype))
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        cache_start: int | torch.Tensor = 0,
        return_logits: bool = True,
        media: Media | None = None,
    ) -> BackboneOutput:
        """Backbone forward on token ids with modality features spliced in.

        `media` is raw items (`MediaItems`, encoded here: training) or features encoded before
        (`MediaFeatures`: decoding encodes once and reuses them every step). Partial cached forwards
        (cache_start != 0) carry no placeholders and take no features.
        """
        features, feature_masks, extras = None, None, {}
        if isinstance(media, MediaItems) and media.inputs:
            features, feature_masks, extras = self.encode(media.inputs, media.masks)
        elif isinstance(media, MediaFeatures):
            features, feature_masks = media.features, media.valid
        partial = isinstance(cache_start, torch.Tensor) or cache_start != 0
        if features and not partial:
            embeds = self.splice(input_ids, features, feature_masks)
            out = self.backbone(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                cache_start=cache_start,
                return_logits=return_logits,
            )
            return replace(out, extras=extras) if extras else out
        return self.backbone(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            cache_start=cache_start,
            return_logits=return_logits,
        )
