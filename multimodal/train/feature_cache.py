"""Frozen towers' features computed once per training item and then served from memory
(``train.cache_features``).

LLaDA-V's first stage, and any stage that keeps the vision tower frozen, runs the same tower over the
same images every epoch: the tower's forward is then pure overhead. On the embedded shapes data (a
0.1M-parameter convolutional tower at 64 px, a 1M-parameter backbone, 2 CPU threads) keeping its outputs
makes LLaDA-V's stage 1 1.9x and a frozen-tower question step 2.0x faster, and such a step then costs a
third of one that trains the tower (benchmarks/RESULTS.md).

Items are keyed by their content (a BLAKE2 digest of the preprocessed tensor's bytes, and of its mask
row when there is one), not by identity: the collate stacks items into new batch tensors, and equal
inputs give equal features whatever batch they arrive in. Misses are encoded together, in one
forward of the batch's new items, in eval mode and without gradients: what is cached is the tower's
deterministic output, so train-time randomness inside a tower (dropout, drop-path, SpecAugment) is off
for cached items, which the log says when the cache is installed.

Only towers that return one (B, N, C) tensor are cached; towers returning per-layer sequences
(speech: `SequenceFeatures`) are refused with their name, as is a tower with a trainable parameter
(a cache would serve stale features). Memory: N x C floats per distinct item (16 x 128 x 4 bytes =
8 KiB per shapes image, 80 MB for the 10,000 training scenes).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class FeatureCache:
    """Memoises a frozen encoder's forward per item; installed on a `ModalityAdapter` as its
    ``feature_cache`` (the adapter then calls ``cache(encoder, inputs, mask)`` instead of the encoder)."""

    def __init__(self, name: str):
        self.name = name
        self._store: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def keys(inputs: torch.Tensor, mask: torch.Tensor | None) -> list[bytes]:
        """One digest per item of (n, ...) `inputs` (and its mask row), from one copy of the batch to the host."""
        host = inputs.detach().contiguous().cpu().numpy()
        rows = None if mask is None else mask.detach().contiguous().cpu().numpy()
        out = []
        for i in range(host.shape[0]):
            digest = hashlib.blake2b(digest_size=16)
            digest.update(f"{host[i].shape} {host[i].dtype}".encode())
            digest.update(host[i].tobytes())
            if rows is not None:
                digest.update(rows[i].tobytes())
            out.append(digest.digest())
        return out

    def __call__(self, encoder: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(n, ...) inputs -> (n, N, C) features, new items encoded in one eval-mode, no-grad forward."""
        keys = self.keys(inputs, mask)
        first: dict[bytes, int] = {}  # an item repeated in the batch (a GRPO group's prompt) is encoded once
        for i, k in enumerate(keys):
            if k not in self._store:
                first.setdefault(k, i)
        missing = list(first.values())
        if missing:
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad():
                new = encoder(inputs[missing], None if mask is None else mask[missing])
            encoder.train(was_training)
            if not isinstance(new, torch.Tensor):
                raise TypeError(
                    f"train.cache_features: the {self.name} tower ({type(encoder).__name__}) returns "
                    f"{type(new).__name__}, not one (B, N, C) tensor; its features cannot be cached"
                )
            for i, features in zip(missing, new, strict=True):
                self._store.setdefault(keys[i], features.detach().clone())
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self._store[k] for k in keys]).to(inputs.device)


def install_feature_caches(model: nn.Module) -> dict[str, FeatureCache]:
    """Put a `FeatureCache` on every modality adapter of `model` (a `MultimodalDiffusionModel`).

    Raises:
        ValueError: the model has no modality adapters, or a tower has a trainable parameter.
    """
    adapters: Any = getattr(model, "adapters", None)
    if not adapters:
        raise ValueError("train.cache_features: the model has no modality towers to cache")
    caches = {}
    for name, adapter in adapters.items():
        trainable = [n for n, p in adapter.encoder.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"train.cache_features: the {name} tower trains ({len(trainable)} tensors, e.g. {trainable[0]}); "
                "features are cached only for a frozen tower (leave 'encoder' out of train.trainable and "
                "set unlocked_groups to 0)"
            )
        caches[name] = adapter.feature_cache = FeatureCache(name)
        log.info("caching the frozen %s tower's features (eval mode, no train-time randomness)", name)
    return caches


def remove_feature_caches(model: nn.Module) -> None:
    """Take the caches off again (a run's model serves evaluation and sampling uncached)."""
    for adapter in (getattr(model, "adapters", None) or {}).values():
        adapter.feature_cache = None
