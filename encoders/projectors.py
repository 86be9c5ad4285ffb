"""Projectors from encoder features (B, N, C) to backbone embeddings (B, N', D).

``linear`` is one matrix; ``mlp2x_gelu`` is LLaVA / LLaDA-V's two-layer MLP with a GELU between.
Modality-specific projectors (DIFFA's adapters, Q-Formers) register themselves here too.
"""

from __future__ import annotations

from torch import nn

from multimodal.registry import new_registry

PROJECTORS = new_registry("projector", "projector")


@PROJECTORS.register("linear")
def linear(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


@PROJECTORS.register("mlp2x_gelu")
def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def create_projector(name: str, in_dim: int, out_dim: int, **kwargs) -> nn.Module:
    return PROJECTORS.create(name, in_dim, out_dim, **kwargs)


def list_projectors(pattern: str = "*") -> list[str]:
    return PROJECTORS.names(pattern)
