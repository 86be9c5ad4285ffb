"""Whisper-LLaDA's released checkpoint (.pth) loads: its BLIP-2 Q-Former adapter computes what
transformers' BLIP-2 Q-Former computes, and its peft LoRA keys land on the backbone's layers."""

from __future__ import annotations

import pytest
import torch

from encoders import create_projector
from encoders.base import SequenceFeatures

C, WIDTH, D, Q, W = 24, 32, 48, 4, 5


def reference_qformer(seed=0):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    torch.manual_seed(seed)
    config = Blip2QFormerConfig(
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=C,
        cross_attention_frequency=1,
    )
    model = Blip2QFormerModel(config).eval()
    for p in model.parameters():  # LayerNorms start at 1 / 0: perturb them so a swapped name shows
        p.data += 0.05 * torch.randn_like(p)
    return model


def release_state(qformer):
    """The checkpoint's ``model`` dict in the LAVIS names the release uses, with the BERT parts the
    query path never reads, the learned queries, the projection and peft LoRA keys."""
    state = {}
    for k, v in qformer.state_dict().items():
        k = k.replace("layernorm.", "embeddings.LayerNorm.").replace("attention.attention.", "attention.self.")
        state[f"adapter.bert.{k}"] = v
    state["adapter.bert.embeddings.word_embeddings.weight"] = torch.randn(30, WIDTH)
    state["adapter.bert.embeddings.position_embeddings.weight"] = torch.randn(16, WIDTH)
    state["adapter.bert.embeddings.position_ids"] = torch.arange(16)[None]
    for i in range(2):
        state[f"adapter.bert.encoder.layer.{i}.intermediate.dense.weight"] = torch.randn(64, WIDTH)
        state[f"adapter.bert.encoder.layer.{i}.output.dense.weight"] = torch.randn(WIDTH, 64)
    state["adapter.cls.predictions.bias"] = torch.randn(30)
    state["speech_query_tokens"] = torch.randn(1, Q, WIDTH)
    state["linear_proj.weight"], state["linear_proj.bias"] = torch.randn(D, WIDTH) * 0.1, torch.randn(D)
    return state


def test_the_released_adapter_equals_blip2_qformer_over_windows(tmp_path):
    qformer = reference_qformer()
    state = release_state(qformer)
    path = tmp_path / "checkpoint_best.pth"
    torch.save({"model": state, "epoch": 3, "config": {"run": {"lr": 1e-4}}}, path)
    adapter = create_projector(
        "window_qformer", C, D, window=W, queries=Q, width=WIDTH, heads=2, intermediate_size=64, weights=str(path)
    ).eval()
    last = torch.randn(2, 23, C)  # 23 frames: 4 windows of 5, 3 frames left over
    with torch.no_grad():
        tokens, valid = adapter(SequenceFeatures((last,), torch.tensor([23, 23])))
        windows = last[:, :20].reshape(2 * 4, W, C)
        ref = qformer(query_embeds=state["speech_query_tokens"].expand(8, -1, -1), encoder_hidden_states=windows)
        expected = (ref.last_hidden_state @ state["linear_proj.weight"].T + state["linear_proj.bias"]).reshape(2, 16, D)
    assert valid.all() and tokens.shape == (2, 16, D)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    broken = dict(state)
    del broken["adapter.bert.encoder.layer.1.output_query.LayerNorm.bias"]
    broken["adapter.bert.encoder.layer.0.crossattention.self.key.weight"] = torch.zeros(WIDTH, C + 1)
    broken["adapter.bert.pooler.dense.weight"] = torch.zeros(1)
    torch.save({"model": broken}, path)
    with pytest.raises(ValueError) as err:
        create_projector(
            "window_qformer", C, D, window=W, queries=Q, width=WIDTH, heads=2, intermediate_size=64, weights=str(path)
        )
    message = str(err.value)
    assert "missing keys: adapter.bert.encoder.layer.1.output_query.LayerNorm.bias" in message
    assert "unexpected keys: adapter.bert.pooler.dense.weight" in message
    assert "mis-shaped keys: adapter.bert.encoder.layer.0.crossattention.self.key.weight" in message


def test_peft_lora_keys_of_the_llada_layout_load_onto_the_backbone(tmp_path):
    from multimodal.backbone import backbone_preset, create_backbone
    from multimodal.lora import add_lora, load_peft_lora

    backbone = create_backbone(backbone_preset("llada_tiny", max_seq_len=64))
    add_lora(backbone, ("q_proj", "k_proj", "v_proj"), 8, 32.0)
    prefix = "llada.base_model.model.model.transformer.blocks"
    state = {}
    for i in range(backbone.config.n_layers):
        for name in ("q_proj", "k_proj", "v_proj"):
            layer = backbone.get_submodule(f"blocks.{i}.{name}")
            state[f"{prefix}.{i}.{name}.lora_A.default.weight"] = torch.randn_like(layer.lora_a)
            state[f"{prefix}.{i}.{name}.lora_B.default.weight"] = torch.randn_like(layer.lora_b)
    assert load_peft_lora(backbone, state, "ckpt.pth") == 3 * backbone.config.n_layers
    torch.testing.assert_close(
        backbone.blocks[1].k_proj.lora_b.detach(), state[f"{prefix}.1.k_proj.lora_B.default.weight"]
    )
    del state[f"{prefix}.0.v_proj.lora_B.default.weight"]
    state[f"{prefix}.0.ff_out.lora_A.default.weight"] = torch.zeros(8, 8)
    with pytest.raises(
        ValueError, match=r"layers without LoRA here: blocks\.0\.ff_out; missing: blocks\.0\.v_proj\.lora_B"
    ):
        load_peft_lora(backbone, state, "ckpt.pth")
