"""LLaDA-MoE as a registered family: parity with the released forward, the key table, grouped experts,
router losses, and the dense family's paths (training, LoRA, caches, batching, the engine)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from multimodal.backbone import LLaDAMoEBackbone, backbone_preset, create_backbone
from multimodal.backbone.convert import CheckpointError, SpecialTokens, load_llada_checkpoint
from multimodal.backbone.convert_moe import moe_json_from_config, save_llada_moe_checkpoint
from multimodal.backbone.moe import load_balancing_loss, router_z_loss
from multimodal.cli import main
from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
from multimodal.lora import add_lora
from multimodal.sampling import SpecialIds, create_sampler, generate, sampler_config_class
from multimodal.train.build import load_run
from multimodal.types import MultimodalBatch

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=24, vocab_size=40, max_seq_len=64,
             n_experts=6, experts_per_token=3)  # fmt: skip


def _rms(x, w, eps):
    dtype = x.dtype
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def _rotate_half(t):
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def release_forward(state: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the released LLaDAMoEModelLM, restated from its modelling file: q/k norms over head_dim
    on the flat projections before rotary, eager attention without a mask, the expert loop with
    softmax routing (fp32) plus expert_bias, top-k, no renormalisation."""
    b, n = ids.shape
    d, heads, kvh = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, e_count, k_top = d // heads, cfg["rms_norm_eps"], cfg["num_experts"], cfg["num_experts_per_tok"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = torch.arange(n).float()[:, None] * inv[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    x = state["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, state[p + "input_layernorm.weight"], eps)
        q, k, v = (h @ state[p + f"self_attn.{m}_proj.weight"].T for m in "qkv")
        q = _rms(q.reshape(-1, hd), state[p + "self_attn.q_norm.weight"], eps).reshape(b, n, -1)
        k = _rms(k.reshape(-1, hd), state[p + "self_attn.k_norm.weight"], eps).reshape(b, n, -1)
        q = q.view(b, n, heads, hd).transpose(1, 2)
        k = k.view(b, n, kvh, hd).transpose(1, 2).repeat_interleave(heads // kvh, dim=1)
        v = v.view(b, n, kvh, hd).transpose(1, 2).repeat_interleave(heads // kvh, dim=1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        att = torch.softmax((q @ k.transpose(2, 3)) / math.sqrt(hd), dim=-1, dtype=torch.float32)
        x = x + (att @ v).transpose(1, 2).reshape(b, n, d) @ state[p + "self_attn.o_proj.weight"].T
        h = _rms(x, state[p + "post_attention_layernorm.weight"], eps).view(-1, d)
        weights = F.softmax(h @ state[p + "mlp.gate.weight"].T, dim=1, dtype=torch.float)
        weights = weights + state[p + "mlp.expert_bias"]
        weights, chosen = torch.topk(weights, k_top, dim=-1)
        out = torch.zeros_like(h)
        one_hot = F.one_hot(chosen, num_classes=e_count).permute(2, 1, 0)
        for e in range(e_count):
            slot, token = torch.where(one_hot[e])
            pe = f"{p}mlp.experts.{e}."
            xe = h[token]
            ye = (F.silu(xe @ state[pe + "gate_proj.weight"].T) * (xe @ state[pe + "up_proj.weight"].T)) @ state[
                pe + "down_proj.weight"
            ].T
            out.index_add_(0, token, ye * weights[token, slot, None])
        x = x + out.view(b, n, d)
    return _rms(x, state["model.norm.weight"], eps) @ state["lm_head.weight"].T


def released_folder(tmp_path, seed=0):
    """A tiny random LLaDA-MoE folder written key by key in the release's layout (not by our exporter)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = backbone_preset("llada_tiny_moe", **SMALL, expert_bias=True)
    cfg = moe_json_from_config(config, SpecialTokens(39, 38, 38))
    g = torch.Generator().manual_seed(seed)
    d, hd, f, kv = config.d_model, config.head_dim, config.mlp_hidden, config.kv_heads * config.head_dim

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    state = {"model.embed_tokens.weight": r(40, d, scale=1.0), "model.norm.weight": 1 + r(d),
             "lm_head.weight": r(40, d)}  # fmt: skip
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        state |= {p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.k_proj.weight": r(kv, d),
                  p + "self_attn.v_proj.weight": r(kv, d), p + "self_attn.o_proj.weight": r(d, d),
                  p + "self_attn.q_norm.weight": 1 + r(hd), p + "self_attn.k_norm.weight": 1 + r(hd),
                  p + "mlp.gate.weight": r(config.n_experts, d, scale=1.0),
                  p + "mlp.expert_bias": r(config.n_experts)}  # fmt: skip
        for e in range(config.n_experts):
            q = f"{p}mlp.experts.{e}."
            state |= {q + "gate_proj.weight": r(f, d), q + "up_proj.weight": r(f, d), q + "down_proj.weight": r(d, f)}
    half = sorted(state)[: len(state) // 2]
    save_file({k: state[k] for k in half}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in state if k not in half}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {
        k: "model-00001-of-00002.safetensors" if k in half else "model-00002-of-00002.safetensors" for k in state
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return state, cfg


def test_logits_equal_the_released_forward(tmp_path):
    state, cfg = released_folder(tmp_path)
    model, special = load_llada_checkpoint(tmp_path)  # the dense entry point tells MoE apart by its fields
    assert type(model) is LLaDAMoEBackbone and special.mask_token_id == 39
    assert model.config.expert_bias and model.config.n_experts == 6
    ids = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
    torch.testing.assert_close(ours, release_forward(state, cfg, ids), atol=2e-5, rtol=1e-4)
    # the bias changes the choice of experts, so the check covers it
    assert model.blocks[0].moe.expert_bias.abs().sum() > 0


def test_export_round_trips_and_splits_experts(tmp_path):
    released_folder(tmp_path / "a")
    model, _ = load_llada_checkpoint(tmp_path / "a")
    save_llada_moe_checkpoint(model, tmp_path / "b", max_shard_bytes=20_000)
    assert len(list((tmp_path / "b").glob("model-*.safetensors"))) > 1
    keys = json.loads((tmp_path / "b" / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.1.mlp.experts.5.down_proj.weight" in keys and "lm_head.weight" in keys
    again, _ = load_llada_checkpoint(tmp_path / "b")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_unsupported_fields_and_missing_experts_are_named(tmp_path):
    released_folder(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key, value, words in [("moe_layer_freq", [0, 1], "dense layers"), ("shared_expert_intermediate_size", 64,
                              "shared expert"), ("attention_bias", True, "attention_bias")]:  # fmt: skip
        (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(CheckpointError, match=words):
            load_llada_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_experts": 7}))
    with pytest.raises(CheckpointError, match=r"missing keys: .*experts\.6\.gate_proj"):
        load_llada_checkpoint(tmp_path)


def test_grouped_experts_equal_every_expert_weighted():
    torch.manual_seed(0)
    moe = create_backbone(backbone_preset("llada_tiny_moe", **SMALL)).blocks[0].moe
    x = torch.randn(3, 7, 32)
    _, weights, chosen = moe.route(x.reshape(-1, 32))
    dense = torch.zeros(21, 32)
    for e in range(6):  # each expert on every token, kept where it was chosen
        h = x.reshape(-1, 32)
        y = (F.silu(h @ moe.gate_proj[e].T) * (h @ moe.up_proj[e].T)) @ moe.down_proj[e].T
        dense += y * (weights * (chosen == e)).sum(-1, keepdim=True)
    torch.testing.assert_close(moe(x), dense.view(3, 7, 32), atol=1e-5, rtol=1e-5)


def test_router_losses_by_hand():
    e, k = 6, 3
    flat = [torch.zeros(5, e), torch.zeros(5, e)]  # a uniform router: every expert 1/E, the first k chosen
    assert load_balancing_loss(flat, k, None).item() == pytest.approx(k)  # E * sum_slots 1/E
    assert router_z_loss(flat, None).item() == pytest.approx(math.log(e) ** 2)
    skewed = torch.randn(5, e) * 3
    tokens = torch.tensor([1, 1, 0, 1, 0])
    # padding tokens do not count: the same value as the real tokens alone
    alone = [skewed[tokens.bool()]]
    assert load_balancing_loss([skewed], k, tokens).item() == pytest.approx(load_balancing_loss(alone, k, None).item())
    assert router_z_loss([skewed], tokens).item() == pytest.approx(router_z_loss(alone, None).item())
    probs = skewed[tokens.bool()].softmax(-1)
    f = F.one_hot(probs.topk(k).indices, e).float().mean(0)  # (k, E)
    assert load_balancing_loss(alone, k, None).item() == pytest.approx(e * float((f * probs.mean(0)).sum()), rel=1e-5)


def test_training_adds_the_router_losses_and_trains_the_router():
    torch.manual_seed(0)
    model = create_backbone(backbone_preset("llada_tiny_moe", **SMALL, load_balance_weight=0.01, router_z_weight=1e-3))
    ids = torch.randint(3, 40, (4, 12))
    batch = MultimodalBatch(input_ids=ids, maskable=torch.ones_like(ids, dtype=torch.bool),
                            attention_mask=torch.ones_like(ids))  # fmt: skip
    schedule = DiffusionConfig().build_schedule()
    out = diffusion_loss(model.train(), batch, DiffusionConfig(), schedule, 39, torch.Generator().manual_seed(0))
    assert out.aux is not None and out.aux > 0
    out.loss.backward()
    assert model.blocks[0].moe.router.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # inference computes no router loss
        assert model(ids).aux_loss is None


def tiny_moe(seed):
    torch.manual_seed(seed)
    return create_backbone(backbone_preset("llada_tiny_moe", max_seq_len=128, init_std=0.2, vocab_size=64)).eval()


def sampler(name="low_confidence", **kw):
    return create_sampler(sampler_config_class(name)(name=name, **kw))


SPECIAL = SpecialIds(mask_id=1, eos_id=2)


@pytest.mark.parametrize("cache", ["prefix", "dual", "block"])
def test_caches_give_the_uncached_tokens_under_block_causal_attention(cache):
    model = tiny_moe(2)
    base = dict(steps=12, gen_length=24, block_length=8, attention="block_causal", threshold=0.3)
    ref = generate(model, [[9, 8, 7, 6, 5]], sampler("threshold", **base), SPECIAL)
    out = generate(model, [[9, 8, 7, 6, 5]], sampler("threshold", cache=cache, **base), SPECIAL)
    assert out.sequences.tolist() == ref.sequences.tolist()


def test_batched_mixed_lengths_equal_decoding_alone():
    model = tiny_moe(1)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    cfg = dict(steps=24, gen_length=24, block_length=8, cache="dual", threshold=0.2, stop_at_eos=True)
    batch = generate(model, prompts, sampler("threshold", **cfg), SPECIAL)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], sampler("threshold", **cfg), SPECIAL)
        assert batch.generated[i].tolist() == alone.generated[0].tolist()


def test_lora_on_the_attention_of_an_moe_backbone():
    model = tiny_moe(0)
    add_lora(model, ("q_proj", "v_proj"), rank=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if ".lora_" in n]
    assert len(trainable) == 4 * 2 * 2  # 4 blocks x 2 targets x (A, B)


def test_a_run_trains_saves_and_decodes_with_the_moe_preset(tmp_path, capsys):
    sets = ["backbone.preset=llada_tiny_moe", "backbone.vocab_size=16", "backbone.load_balance_weight=0.01",
            f"train.output_dir={tmp_path}", "train.max_steps=3", "train.batch_size=4", "train.threads=1",
            "task.train_size=40", "task.test_size=4", "task.validation_size=4", "sampler.cache=dual"]  # fmt: skip
    assert main(["train", "-c", "digits_reverse", *[a for s in sets for a in ("--set", s)]]) == 0
    run = load_run(tmp_path / "digits_reverse")  # the saved preset brings the family back
    assert type(run.model) is LLaDAMoEBackbone and run.model.config.load_balance_weight == 0.01
    assert "exact_match" in capsys.readouterr().out
    metrics = (tmp_path / "digits_reverse" / "metrics.jsonl").read_text()
    assert "router_loss" in metrics


def test_temperature_zero_decoding_equals_the_release_generate_loop(tmp_path):
    from tests.reference_llada import reference_generate

    state, cfg = released_folder(tmp_path)
    model, _ = load_llada_checkpoint(tmp_path)
    prompt = torch.tensor([[17, 22, 9, 7, 30, 31]])
    ref, _ = reference_generate(lambda x: release_forward(state, cfg, x), prompt, 8, 16, 8, 39)
    cfg0 = dict(steps=8, gen_length=16, block_length=8)
    out = generate(model, prompt, sampler(**cfg0), SpecialIds(mask_id=39, eos_id=38))
    assert out.sequences.tolist() == ref.tolist()


def test_sample_from_a_released_moe_folder(tmp_path, capsys):
    from tests.test_chat import llada_tokenizer_folder

    torch.manual_seed(0)
    folder = tmp_path / "LLaDA-MoE-tiny"
    save_llada_moe_checkpoint(tiny_moe(0), folder, SpecialTokens(1, 2, 2))
    llada_tokenizer_folder(folder)
    overrides = ["--set", "sampler.steps=8", "--set", "sampler.gen_length=16", "--set", "sampler.block_length=8"]
    assert main(["sample", "--llada", str(folder), "--raw", "--prompt", "hello world", *overrides]) == 0
    assert capsys.readouterr().out.startswith("hello world -> ")
