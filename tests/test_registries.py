"""Every registered tiny encoder and every projector runs on the CPU (DESIGN.md principle 7)."""

from __future__ import annotations

import pytest
import torch

from encoders import ENCODERS, PROJECTORS, ModalityAdapter, create_encoder, create_projector

TINY = [n for n in ENCODERS.names() if n.endswith("_tiny")]
RAW = {
    "image": lambda: __import__("PIL.Image", fromlist=["Image"]).new("RGB", (40, 30), (200, 30, 30)),
    "audio": lambda: torch.randn(8000) * 0.1,
    "protein": lambda: "MKTAYIAKQRQISFVKSHFSRQ",
}


def test_every_modality_has_a_tiny_encoder():
    assert {"conv_tiny", "timm_tiny", "open_clip_tiny", "siglip_tiny", "whisper_tiny", "esm2_tiny"} <= set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_tiny_encoders_preprocess_encode_and_backpropagate(name):
    torch.manual_seed(0)
    tower = create_encoder(name)
    projector = getattr(tower, "default_projector", "mlp2x_gelu" if tower.modality == "image" else "sequence_linear")
    adapter = ModalityAdapter(tower, create_projector(projector, tower.output_dim, 24))
    item = tower.preprocess(RAW[tower.modality]())
    tokens, valid, _ = adapter(item[None])
    assert tokens.shape[-1] == 24 and int(valid.sum()) == adapter.num_tokens(item)
    tokens[valid].sum().backward()
    assert any(p.grad is not None for p in tower.parameters())


@pytest.mark.parametrize("name", [n for n in PROJECTORS.names() if n in ("linear", "mlp2x_gelu")])
def test_image_projectors(name):
    assert create_projector(name, 16, 8)(torch.randn(2, 5, 16)).shape == (2, 5, 8)
