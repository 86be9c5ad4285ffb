"""Released-layout LLaDA checkpoints: export, sharded import, parity with the reference forward, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.backbone.convert import (
    CheckpointError,
    SpecialTokens,
    load_llada_checkpoint,
    save_llada_checkpoint,
)
from tests.reference_llada import reference_forward


def released_state(folder):
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


@pytest.fixture
def tiny_gqa():
    torch.manual_seed(0)
    return create_backbone(backbone_preset("llada_tiny_gqa", max_seq_len=64, init_std=0.1))


def test_sharded_export_import_round_trip(tmp_path, tiny_gqa):
    special = SpecialTokens(mask_token_id=5, eos_token_id=2, pad_token_id=0)
    save_llada_checkpoint(tiny_gqa, tmp_path, special, max_shard_bytes=200_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {"model.transformer." + k for k in tiny_gqa.state_dict()}
    assert "model.transformer.blocks.0.ff_proj.weight" in index["weight_map"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["n_kv_heads"] == 2 and cfg["mask_token_id"] == 5 and cfg["mlp_hidden_size"] == 384
    loaded, got_special = load_llada_checkpoint(tmp_path)
    assert got_special == special
    ids = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(loaded(ids).logits, tiny_gqa(ids).logits)


@pytest.mark.parametrize("preset", ["llada_tiny", "llada_tiny_gqa"])
def test_logits_match_the_reference_modelling_code(tmp_path, preset):
    torch.manual_seed(1)
    model = create_backbone(backbone_preset(preset, max_seq_len=64, init_std=0.1))
    save_llada_checkpoint(model, tmp_path)
    loaded, _ = load_llada_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    state = released_state(tmp_path)
    ids = torch.randint(0, 256, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0  # left padding on the second row: keys hidden, positions 0..L-1 as released
    ours = loaded(ids, attention_mask=mask).logits
    ref = reference_forward(state, cfg, ids, mask)
    assert (ours - ref).abs().max().item() < 1e-4


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, tiny_gqa):
    save_llada_checkpoint(tiny_gqa, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("model.transformer.blocks.1.q_proj.weight")
    state["model.transformer.blocks.0.extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_llada_checkpoint(tmp_path)
    assert "blocks.1.q_proj.weight" in str(err.value) and "blocks.0.extra.weight" in str(err.value)

    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("model.transformer.blocks.0.extra.weight")
    state["model.transformer.blocks.1.q_proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: model.transformer.blocks.1.q_proj.weight \(3, 3\)"):
        load_llada_checkpoint(tmp_path)


def test_unsupported_architecture_flag_is_refused(tmp_path, tiny_gqa):
    save_llada_checkpoint(tiny_gqa, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["alibi"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="alibi=True is not supported"):
        load_llada_checkpoint(tmp_path)


def test_missing_folder_and_shard(tmp_path, tiny_gqa):
    with pytest.raises(CheckpointError, match="not found"):
        load_llada_checkpoint(tmp_path / "nope")
    save_llada_checkpoint(tiny_gqa, tmp_path, max_shard_bytes=200_000)
    next(iter(sorted(tmp_path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_llada_checkpoint(tmp_path)


def test_load_casts_dtype(tmp_path, tiny_gqa):
    save_llada_checkpoint(tiny_gqa, tmp_path)
    model, _ = load_llada_checkpoint(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
