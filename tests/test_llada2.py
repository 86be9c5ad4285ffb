"""LLaDA2 as a registered family: parity with the released forward under its block-causal mask, the key
table (fused q / k / v split, stacked experts, shared experts, dense first layer), block-diffusion
training and decoding with the exact block cache."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from multimodal.backbone import LLaDA2Backbone, backbone_preset
from multimodal.backbone.convert import CheckpointError, load_llada_checkpoint
from multimodal.backbone.convert_llada2 import llada2_json_from_config, save_llada2_checkpoint
from multimodal.backbone.released import SpecialTokens
from multimodal.cli import main
from multimodal.sampling import SpecialIds, create_sampler, generate, sampler_config_class
from multimodal.train.build import load_run

SMALL = dict(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, mlp_hidden=16, vocab_size=40, max_seq_len=64,
             n_experts=8, experts_per_token=3, dense_hidden=48, first_dense_layers=1, shared_experts=1, n_group=4,
             topk_group=2, routed_scaling=2.5, rotary_fraction=0.5, qkv_bias=True)  # fmt: skip
MASK = 39


def _rms(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(t):
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def _mlp(state, prefix, x):
    gate = F.silu(x @ state[prefix + "gate_proj.weight"].T)
    return (gate * (x @ state[prefix + "up_proj.weight"].T)) @ state[prefix + "down_proj.weight"].T


def release_forward(state: dict, cfg: dict, ids: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
    """Logits of the released LLaDA2MoeModelLM with a (B, 1, L, L) additive mask, restated from its
    modelling file: fused qkv split by heads, q / k layernorm, partial rotary, sigmoid group-limited
    routing with the expert bias for the choice, normalised and scaled weights, shared experts."""
    b, n = ids.shape
    d, heads, kvh = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps = d // heads, cfg["rms_norm_eps"]
    rope = int(hd * cfg["partial_rotary_factor"])
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, rope, 2, dtype=torch.int64).float() / rope))
    freqs = torch.arange(n).float()[:, None] * inv[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    x = state["model.word_embeddings.weight"][ids]
    e_count, k_top, groups, top_groups = (
        cfg["num_experts"],
        cfg["num_experts_per_tok"],
        cfg["n_group"],
        cfg["topk_group"],
    )
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, state[p + "input_layernorm.weight"], eps)
        qkv = h @ state[p + "attention.query_key_value.weight"].T + state[p + "attention.query_key_value.bias"]
        q, k, v = qkv.view(b, n, heads + 2 * kvh, hd).split([heads, kvh, kvh], dim=-2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = _rms(q, state[p + "attention.query_layernorm.weight"], eps)
        k = _rms(k, state[p + "attention.key_layernorm.weight"], eps)
        q = torch.cat((q[..., :rope] * cos + _rotate_half(q[..., :rope]) * sin, q[..., rope:]), dim=-1)
        k = torch.cat((k[..., :rope] * cos + _rotate_half(k[..., :rope]) * sin, k[..., rope:]), dim=-1)
        k, v = k.repeat_interleave(heads // kvh, dim=1), v.repeat_interleave(heads // kvh, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + additive, dim=-1, dtype=torch.float32)
        x = x + (att @ v).transpose(1, 2).reshape(b, n, d) @ state[p + "attention.dense.weight"].T
        h = _rms(x, state[p + "post_attention_layernorm.weight"], eps)
        if i < cfg["first_k_dense_replace"]:
            x = x + _mlp(state, p + "mlp.", h)
            continue
        flat = h.view(-1, d)
        scores = torch.sigmoid(F.linear(flat.float(), state[p + "mlp.gate.weight"].float()))
        biased = scores + state[p + "mlp.gate.expert_bias"]
        group_scores = biased.view(b * n, groups, -1).topk(2, dim=-1)[0].sum(dim=-1)
        group_mask = torch.zeros_like(group_scores).scatter_(1, torch.topk(group_scores, top_groups, dim=-1)[1], 1)
        score_mask = group_mask.unsqueeze(-1).expand(b * n, groups, e_count // groups).reshape(b * n, -1)
        _, chosen = torch.topk(biased.masked_fill(~score_mask.bool(), float("-inf")), k_top, dim=-1)
        weights = torch.gather(scores, 1, chosen)
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20) * cfg["routed_scaling_factor"]
        out = torch.zeros(b * n, d)
        for slot in range(k_top):
            for t in range(b * n):
                e = int(chosen[t, slot])
                out[t] += _mlp(state, f"{p}mlp.experts.{e}.", flat[t]) * weights[t, slot]
        x = x + out.view(b, n, d) + _mlp(state, p + "mlp.shared_experts.", h)
    return _rms(x, state["model.norm.weight"], eps) @ state["lm_head.weight"].T


def released_folder(folder, seed=0):
    """A tiny random LLaDA2 folder written key by key in the release's layout (not by our exporter)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = backbone_preset("llada2_tiny", **SMALL)
    cfg = llada2_json_from_config(config, SpecialTokens(MASK, 38, 38))
    g = torch.Generator().manual_seed(seed)
    d, hd, kv, f, fd = config.d_model, config.head_dim, config.kv_heads * config.head_dim, 16, 48

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    state = {"model.word_embeddings.weight": r(40, d, scale=1.0), "model.norm.weight": 1 + r(d),
             "lm_head.weight": r(40, d, scale=1.0)}  # fmt: skip
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        state |= {p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "attention.query_key_value.weight": r(d + 2 * kv, d),
                  p + "attention.query_key_value.bias": r(d + 2 * kv), p + "attention.dense.weight": r(d, d),
                  p + "attention.query_layernorm.weight": 1 + r(hd),
                  p + "attention.key_layernorm.weight": 1 + r(hd)}  # fmt: skip
        if i == 0:
            state |= {p + "mlp.gate_proj.weight": r(fd, d), p + "mlp.up_proj.weight": r(fd, d),
                      p + "mlp.down_proj.weight": r(d, fd)}  # fmt: skip
            continue
        state |= {p + "mlp.gate.weight": r(8, d, scale=1.0), p + "mlp.gate.expert_bias": r(8, scale=0.2),
                  p + "mlp.shared_experts.gate_proj.weight": r(f, d), p + "mlp.shared_experts.up_proj.weight": r(f, d),
                  p + "mlp.shared_experts.down_proj.weight": r(d, f)}  # fmt: skip
        for e in range(8):
            q = f"{p}mlp.experts.{e}."
            state |= {q + "gate_proj.weight": r(f, d), q + "up_proj.weight": r(f, d), q + "down_proj.weight": r(d, f)}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    return state, cfg


def block_causal(n: int, prompt: int, block: int) -> torch.Tensor:
    """(1, L, L) bool: the prompt is block 0, then blocks of `block` (the sampler's layout)."""
    ids = torch.zeros(n, dtype=torch.long)
    ids[prompt:] = 1 + torch.arange(n - prompt) // block
    return (ids[None, :] <= ids[:, None])[None]


def test_logits_equal_the_released_forward_under_the_block_causal_mask(tmp_path):
    state, cfg = released_folder(tmp_path)
    model, special = load_llada_checkpoint(tmp_path)  # found by model_type "llada2_moe"
    assert type(model) is LLaDA2Backbone and special.mask_token_id == MASK
    ids = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(1))
    allowed = block_causal(11, 3, 4)
    additive = torch.zeros(1, 1, 11, 11).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    with torch.no_grad():
        ours = model(ids, attention_mask=allowed).logits
    torch.testing.assert_close(ours, release_forward(state, cfg, ids, additive), atol=3e-5, rtol=1e-4)


def test_export_round_trips_and_bad_folders_are_named(tmp_path):
    released_folder(tmp_path / "a")
    model, _ = load_llada_checkpoint(tmp_path / "a")
    save_llada2_checkpoint(model, tmp_path / "b")
    keys = set(json.loads((tmp_path / "b" / "config.json").read_text()))
    assert {"first_k_dense_replace", "n_group", "partial_rotary_factor"} <= keys
    again, _ = load_llada_checkpoint(tmp_path / "b")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "score_function": "softmax"}))
    with pytest.raises(CheckpointError, match="score_function"):
        load_llada_checkpoint(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "num_experts": 12, "n_group": 4}))
    with pytest.raises(CheckpointError, match=r"missing keys: .*mlp\.experts\.8\.down_proj"):
        load_llada_checkpoint(tmp_path / "a")


@pytest.mark.parametrize("cache", ["block", "dual"])
def test_block_diffusion_decoding_with_caches(tmp_path, cache):
    released_folder(tmp_path)
    model, _ = load_llada_checkpoint(tmp_path)
    cfg = dict(steps=12, gen_length=12, block_length=4, attention="block_causal")
    make = sampler_config_class("low_confidence")
    ref = generate(model, [[5, 17, 22]], create_sampler(make(**cfg)), SpecialIds(mask_id=MASK, eos_id=38))
    out = generate(model, [[5, 17, 22]], create_sampler(make(cache=cache, **cfg)), SpecialIds(mask_id=MASK, eos_id=38))
    assert out.sequences.tolist() == ref.sequences.tolist()


def test_an_llada2_run_trains_as_block_diffusion(tmp_path, capsys):
    sets = ["backbone.preset=llada2_tiny", "backbone.vocab_size=16", f"train.output_dir={tmp_path}",
            "train.max_steps=3", "train.batch_size=4", "train.threads=1", "task.train_size=40", "task.test_size=4",
            "task.validation_size=4"]  # fmt: skip
    assert main(["train", "-c", "digits_reverse_block", *[a for s in sets for a in ("--set", s)]]) == 0
    run = load_run(tmp_path / "digits_reverse_block")
    assert type(run.model) is LLaDA2Backbone and run.config.diffusion.block_size == 4
    assert "exact_match" in capsys.readouterr().out
