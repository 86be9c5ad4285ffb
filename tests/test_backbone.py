"""Backbone presets, masks, positions and embeddings."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone import BACKBONE_PRESETS, backbone_preset, create_backbone

TINY = [n for n in BACKBONE_PRESETS.names() if BACKBONE_PRESETS.get(n).num_parameters() < 10_000_000]


def test_every_family_has_a_tiny_preset():
    assert "llada_tiny" in TINY and "llada_tiny_gqa" in TINY


@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_forward_backward_and_state_dict_round_trip(name):
    torch.manual_seed(0)
    model = create_backbone(name, max_seq_len=64)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    out = model(ids)
    assert out.logits.shape == (2, 12, model.config.vocab_size)
    out.logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    clone = create_backbone(name, max_seq_len=64)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone(ids).logits, model(ids).logits)


@pytest.mark.parametrize("name,count", [("llada_8b", 8_015_581_184), ("llada_1b", 1_648_453_632)])
def test_large_presets_on_meta_device(name, count):
    # 8,015,581,184 parameters x 2 bytes = the 16,031,162,368 bytes of the released bf16 checkpoint
    model = create_backbone(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count
    assert all(p.is_meta for p in model.parameters())
    assert BACKBONE_PRESETS.get(name).num_parameters() == count


def test_llada_8b_shape_matches_the_release():
    c = BACKBONE_PRESETS.get("llada_8b")
    assert (c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.mlp_hidden, c.vocab_size) == (
        4096,
        32,
        32,
        32,
        12288,
        126464,
    )
    assert c.rope_theta == 500000.0 and c.rms_norm_eps == 1e-5 and not c.tie_embeddings


def test_padding_mask_with_positions_equals_unpadded():
    torch.manual_seed(0)
    model = create_backbone("llada_tiny")
    ids = torch.randint(0, 256, (1, 7))
    alone = model(ids).logits
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(padded, attention_mask=mask, position_ids=pos).logits[:, 3:]
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)


def test_block_causal_mask_hides_later_blocks():
    torch.manual_seed(0)
    model = create_backbone("llada_tiny")
    ids = torch.randint(0, 256, (1, 8))
    blocks = torch.arange(8) // 4  # two blocks of 4
    mask = (blocks[None, :] <= blocks[:, None])[None]  # (1, L, L): query i sees keys of blocks <= its own
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 256
    a = model(ids, attention_mask=mask).logits
    b = model(changed, attention_mask=mask).logits
    torch.testing.assert_close(a[:, :4], b[:, :4])  # first block cannot see the change
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_inputs_embeds_path_equals_ids_path():
    torch.manual_seed(0)
    model = create_backbone("llada_tiny_gqa")
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(model(inputs_embeds=model.embed(ids)).logits, model(ids).logits)


def test_hidden_states_without_logits():
    model = create_backbone("llada_tiny")
    ids = torch.randint(0, 256, (2, 5))
    out = model(ids, return_logits=False)
    assert out.logits is None and out.hidden_states.shape == (2, 5, 128)
    torch.testing.assert_close(model.head(out.hidden_states), model(ids).logits)


def test_clear_errors():
    model = create_backbone("llada_tiny", max_seq_len=8)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 2, 3, 4))
    with pytest.raises(ValueError, match="divisible"):
        backbone_preset("llada_tiny", n_heads=3)
    with pytest.raises(KeyError, match="did you mean 'llada_tiny'"):
        create_backbone("llada_tiyn")
