"""LoRA on the backbone's attention projections."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone import create_backbone
from multimodal.lora import LoRALinear, add_lora, merge_lora


def test_lora_starts_at_the_base_model_trains_only_adapters_and_merges():
    torch.manual_seed(0)
    model = create_backbone("llada_tiny")
    ids = torch.randint(0, 256, (2, 8))
    before = model(ids).logits
    for p in model.parameters():
        p.requires_grad_(False)
    names = add_lora(model, ("q_proj", "k_proj", "v_proj"), rank=8, alpha=32)
    assert len(names) == 12 and isinstance(model.blocks[0].q_proj, LoRALinear)
    torch.testing.assert_close(model(ids).logits, before)  # B = 0 at the start
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_a", "lora_b"}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(ids).logits.pow(2).mean().backward()
    opt.step()
    after = model(ids).logits
    assert not torch.allclose(after, before)
    assert merge_lora(model) == 12 and not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(ids).logits, after, atol=1e-5, rtol=1e-5)


def test_lora_needs_a_match():
    with pytest.raises(ValueError, match="name no linear layer"):
        add_lora(create_backbone("llada_tiny"), ("nope",), 4, 8)


def test_every_lora_target_must_match():
    # d1's release lists targets LLaDA does not have, so most layers silently stay unadapted: here it is an error
    with pytest.raises(ValueError, match=r"\['o_proj', 'gate_proj'\] name no linear layer.*attn_out"):
        add_lora(create_backbone("llada_tiny"), ("q_proj", "o_proj", "gate_proj"), 4, 8)
