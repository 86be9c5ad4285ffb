"""Dream as a registered family: the released forward with its logit shift, `diffusion_generate` per
algorithm at temperature 0 (and with seeded randomness), the key table, caches, CART and a training run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from multimodal.backbone import DreamBackbone, KVCache, backbone_preset, create_backbone
from multimodal.backbone.convert import CheckpointError, load_llada_checkpoint
from multimodal.backbone.convert_dream import DREAM_SPECIAL, dream_json_from_config, save_dream_checkpoint
from multimodal.backbone.released import SpecialTokens
from multimodal.cli import main
from multimodal.sampling import SpecialIds, create_sampler, generate, sampler_config_class
from multimodal.train.build import load_run

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=48, vocab_size=40, max_seq_len=64)
MASK = 39


def _rms(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(t):
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def release_forward(state: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """Unshifted logits of the released DreamModel (Qwen2 layout, attention without a causal mask),
    restated from its modelling file."""
    b, n = ids.shape
    d, heads, kvh = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps = d // heads, cfg["rms_norm_eps"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = torch.arange(n).float()[:, None] * inv[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    x = state["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, state[p + "input_layernorm.weight"], eps)
        q, k, v = (h @ state[p + f"self_attn.{m}_proj.weight"].T + state[p + f"self_attn.{m}_proj.bias"] for m in "qkv")
        q = q.view(b, n, heads, hd).transpose(1, 2)
        k = k.view(b, n, kvh, hd).transpose(1, 2).repeat_interleave(heads // kvh, dim=1)
        v = v.view(b, n, kvh, hd).transpose(1, 2).repeat_interleave(heads // kvh, dim=1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        att = torch.softmax((q @ k.transpose(2, 3)) / math.sqrt(hd), dim=-1, dtype=torch.float32)
        x = x + (att @ v).transpose(1, 2).reshape(b, n, d) @ state[p + "self_attn.o_proj.weight"].T
        h = _rms(x, state[p + "post_attention_layernorm.weight"], eps)
        gate = F.silu(h @ state[p + "mlp.gate_proj.weight"].T) * (h @ state[p + "mlp.up_proj.weight"].T)
        x = x + gate @ state[p + "mlp.down_proj.weight"].T
    return _rms(x, state["model.norm.weight"], eps) @ state["lm_head.weight"].T


def _sample_tokens(logits, temperature, top_p, top_k, margin=False, neg_entropy=False):
    """The release's `sample_tokens` at temperature 0 (argmax of the filtered probabilities)."""
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = 0
        logits = logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop),
                                    torch.finfo(logits.dtype).min)  # fmt: skip
    if top_k is not None:
        kth = torch.topk(logits, top_k)[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    confidence, x0 = probs.max(dim=-1)
    if margin:
        top = torch.sort(probs, dim=-1, descending=True)[0]
        confidence = top[:, 0] - top[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def release_generate(state, cfg, prompt, gen, steps, alg, alg_temp=0.0, top_p=None, top_k=None, eps=1e-3):
    """`diffusion_generate`'s `_sample` at temperature 0, one row, restated (global RNG for its draws)."""
    x = F.pad(prompt, (0, gen), value=MASK)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == MASK
        logits = release_forward(state, cfg, x)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + MASK
            transfer = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer] = _sample_tokens(mask_logits[transfer], 0.0, top_p, top_k)
            x[mask_index] = x0.clone()
            continue
        confidence, x0 = _sample_tokens(mask_logits, 0.0, top_p, top_k, alg == "topk_margin", alg == "entropy")
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        k = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full[mask_index] = confidence
        if k > 0:
            if alg_temp:
                index = torch.multinomial(F.softmax(full / alg_temp, dim=-1), num_samples=k)
            else:  # torch.topk's order among equal scores is unspecified: ties leftmost first, as ours
                index = full.argsort(dim=-1, descending=True, stable=True)[:, :k]
            x_ = torch.zeros_like(x) + MASK
            x_[mask_index] = x0.clone()
            rows = torch.arange(x.size(0)).unsqueeze(1).expand_as(index)
            x[rows, index] = x_[rows, index]
    return x


def released_folder(folder, seed=0):
    """A tiny random Dream folder written key by key in the release's layout (not by our exporter)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = backbone_preset("dream_tiny", **SMALL)
    cfg = dream_json_from_config(config, SpecialTokens(MASK, 38, 38))
    g = torch.Generator().manual_seed(seed)
    d, kv, f = config.d_model, config.kv_heads * config.head_dim, config.mlp_hidden

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    state = {"model.embed_tokens.weight": r(40, d, scale=1.0), "model.norm.weight": 1 + r(d),
             "lm_head.weight": r(40, d, scale=1.0)}  # fmt: skip
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        state |= {p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.q_proj.bias": r(d),
                  p + "self_attn.k_proj.weight": r(kv, d), p + "self_attn.k_proj.bias": r(kv),
                  p + "self_attn.v_proj.weight": r(kv, d), p + "self_attn.v_proj.bias": r(kv),
                  p + "self_attn.o_proj.weight": r(d, d), p + "mlp.gate_proj.weight": r(f, d),
                  p + "mlp.up_proj.weight": r(f, d), p + "mlp.down_proj.weight": r(d, f)}  # fmt: skip
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    return state, cfg


def test_logits_are_the_release_forward_shifted_by_one(tmp_path):
    state, cfg = released_folder(tmp_path)
    model, special = load_llada_checkpoint(tmp_path)  # found by model_type "Dream"
    assert type(model) is DreamBackbone and special.mask_token_id == MASK
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = release_forward(state, cfg, ids)
    with torch.no_grad():
        ours = model(ids).logits
    torch.testing.assert_close(ours[:, 1:], ref[:, :-1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours[:, 0], ref[:, 0], atol=2e-5, rtol=1e-4)  # position 0 keeps its own


def dream(**kw):
    return create_sampler(sampler_config_class("dream")(name="dream", **kw))


@pytest.mark.parametrize(
    "alg,extra",
    [("maskgit_plus", {}), ("topk_margin", {}), ("entropy", {}), ("maskgit_plus", {"top_p": 0.6}),
     ("entropy", {"top_k": 3})],
)  # fmt: skip
def test_temperature_zero_tokens_equal_diffusion_generate(tmp_path, alg, extra):
    state, cfg = released_folder(tmp_path)
    model, _ = load_llada_checkpoint(tmp_path)
    prompt = torch.tensor([[5, 17, 22, 9]])
    ref = release_generate(state, cfg, prompt.clone(), 12, 6, alg, **extra)
    out = generate(model, prompt, dream(alg=alg, steps=6, gen_length=12, block_length=12, **extra),
                   SpecialIds(mask_id=MASK))  # fmt: skip
    assert out.sequences.tolist() == ref.tolist()


def test_seeded_origin_draws_equal_the_release_s(tmp_path):
    state, cfg = released_folder(tmp_path)
    model, _ = load_llada_checkpoint(tmp_path)
    prompt = torch.tensor([[5, 17, 22, 9]])
    torch.manual_seed(7)
    ref = release_generate(state, cfg, prompt.clone(), 12, 6, "origin")
    sampler = dream(alg="origin", steps=6, gen_length=12, block_length=12)
    out = generate(model, prompt, sampler, SpecialIds(mask_id=MASK), generator=torch.Generator().manual_seed(7))
    assert out.sequences.tolist() == ref.tolist()


def test_alg_temp_draws_positions_from_the_softmax_of_their_scores():
    sampler = dream(alg="maskgit_plus", alg_temp=0.5, steps=1, gen_length=4, block_length=4)
    logits = torch.zeros(1, 4, 5)
    logits[0, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # candidate probabilities rise left to right
    masked = torch.ones(1, 4, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    sampler.block_step_count = 2  # step 0 of 2 commits int(4 (1 - s/t)) = 1 position
    counts = torch.zeros(4)
    for _ in range(4000):
        counts += sampler.step(logits, masked, torch.ones(1), SpecialIds(mask_id=4), g, step=0)[1][0].float()
    p = torch.softmax(logits, -1)[0, :, 0]
    want = torch.softmax(p / 0.5, dim=-1)
    assert counts.sum() == 4000
    torch.testing.assert_close(counts / 4000, want, atol=0.03, rtol=0)


def test_caches_take_the_shift_from_the_previous_position():
    torch.manual_seed(0)
    model = create_backbone(backbone_preset("dream_tiny", max_seq_len=64, init_std=0.2)).eval()
    ids = torch.randint(4, 256, (2, 16))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache()
        model(ids, cache=cache)
        part = model(ids[:, 6:10], cache=cache, cache_start=6).logits  # position 6 reads 5 from the cache
        torch.testing.assert_close(part, full[:, 6:10], atol=1e-5, rtol=1e-5)
        scattered = model(ids[:, [3, 11]], cache=cache, cache_start=torch.tensor([[3, 11]] * 2)).logits
        torch.testing.assert_close(scattered, full[:, [3, 11]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache", ["prefix", "dual", "block"])
def test_block_causal_caches_give_the_uncached_tokens(cache):
    torch.manual_seed(2)
    model = create_backbone(backbone_preset("dream_tiny", max_seq_len=128, init_std=0.2, vocab_size=64)).eval()
    base = dict(steps=12, gen_length=24, block_length=8, attention="block_causal", alg="entropy")
    ref = generate(model, [[9, 8, 7, 6, 5]], dream(**base), SpecialIds(mask_id=1, eos_id=2))
    out = generate(model, [[9, 8, 7, 6, 5]], dream(cache=cache, **base), SpecialIds(mask_id=1, eos_id=2))
    assert out.sequences.tolist() == ref.sequences.tolist()


def test_export_round_trips_and_bad_folders_are_named(tmp_path):
    released_folder(tmp_path / "a")
    model, _ = load_llada_checkpoint(tmp_path / "a")
    save_dream_checkpoint(model, tmp_path / "b", DREAM_SPECIAL)
    again, special = load_llada_checkpoint(tmp_path / "b")
    assert special == DREAM_SPECIAL
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "use_sliding_window": True}))
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        load_llada_checkpoint(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing keys: .*blocks\.2\.q_proj\.bias"):
        load_llada_checkpoint(tmp_path / "a")


def test_a_dream_run_trains_and_decodes(tmp_path, capsys):
    sets = ["backbone.preset=dream_tiny", "backbone.vocab_size=16", f"train.output_dir={tmp_path}",
            "train.max_steps=3", "train.batch_size=4", "train.threads=1", "task.train_size=40", "task.test_size=4",
            "task.validation_size=4", "sampler.name=dream", "sampler.alg=entropy", "sampler.cache=dual"]  # fmt: skip
    assert main(["train", "-c", "digits_reverse", *[a for s in sets for a in ("--set", s)]]) == 0
    run = load_run(tmp_path / "digits_reverse")
    assert type(run.model) is DreamBackbone and run.config.sampler.alg == "entropy"
    assert "exact_match" in capsys.readouterr().out


def test_cart_weights_by_hand():
    from multimodal.diffusion.cart import cart_weights

    masked = torch.tensor([[False, True, True, False, True]])
    real = torch.tensor([[1, 1, 1, 1, 0]])  # the last position is padding: no context
    w = cart_weights(masked, real, p=0.5)

    def kernel(d):
        return 0.5 * 0.5 ** (d - 1)

    clean = [0, 3]
    for n in (1, 2, 4):
        want = 0.5 * sum(kernel(abs(n - i)) for i in clean)
        assert w[0, n].item() == pytest.approx(want)
    assert w[0, 1] > w[0, 2] or w[0, 1] == w[0, 2]  # both touch one clean neighbour at distance 1
    with pytest.raises(ValueError, match="CART rate"):
        cart_weights(masked, None, p=0.0)


def test_cart_replaces_the_time_weight_in_the_loss():
    from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
    from multimodal.types import MultimodalBatch

    torch.manual_seed(0)
    model = create_backbone(backbone_preset("dream_tiny", vocab_size=32, max_seq_len=64))
    ids = torch.randint(4, 32, (4, 16))
    batch = MultimodalBatch(input_ids=ids, maskable=torch.ones_like(ids, dtype=torch.bool))
    losses = {}
    for weighting in ("schedule", "cart"):
        cfg = DiffusionConfig(weighting=weighting, normalisation="sequence")
        losses[weighting] = diffusion_loss(model, batch, cfg, cfg.build_schedule(), 1, torch.Generator().manual_seed(3))
    same = losses["cart"]
    assert same.num_masked == losses["schedule"].num_masked  # the same masks, other weights
    assert same.loss.item() != pytest.approx(losses["schedule"].loss.item())
