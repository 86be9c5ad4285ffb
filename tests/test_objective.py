"""Schedules, corruption, and the masked-diffusion loss (hand-computed values, chunking, normalisations)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multimodal.backbone import create_backbone
from multimodal.config import ConfigError, from_dict
from multimodal.diffusion.corruption import bert_corruption, mask_tokens, random_truncation_length
from multimodal.diffusion.loss import chunked_cross_entropy, masked_diffusion_loss
from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
from multimodal.diffusion.schedule import SCHEDULES, create_schedule
from multimodal.types import MultimodalBatch


def test_llada_linear_probability_and_weight():
    s = create_schedule("llada_linear", eps=1e-3)
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(s.mask_prob(t), torch.tensor([1e-3, 0.5005, 1.0]))
    torch.testing.assert_close(s.loss_weight(t), 1 / torch.tensor([1e-3, 0.5005, 1.0]))


@pytest.mark.parametrize("name", [n for n in SCHEDULES.names() if n != "constant"])
def test_schedule_weight_is_minus_alpha_prime_over_one_minus_alpha(name):
    s = create_schedule(name, eps=1e-3)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64).requires_grad_()
    p = s.mask_prob(t)
    (dp,) = torch.autograd.grad(p.sum(), t)  # -alpha' = dp/dt
    expected = dp / p
    if name == "llada_linear":  # LLaDA divides by p itself: weight = (1/(1-eps)) * (-alpha'/(1-alpha))
        expected = expected / (1 - 1e-3)
    torch.testing.assert_close(s.loss_weight(t.detach()), expected.detach())
    # time_of inverts mask_prob
    for tt in (0.2, 0.7):
        assert abs(s.time_of(float(s.mask_prob(torch.tensor(tt)))) - tt) < 1e-6


def test_constant_schedule_is_the_masked_lm_objective():
    s = create_schedule("constant", mask_rate=0.15)
    t = s.sample_t(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.mask_prob(t), torch.full((4,), 0.15)) and torch.equal(s.loss_weight(t), torch.ones(4))


def test_antithetic_times_cover_the_interval_evenly():
    s = create_schedule("llada_linear")
    g = torch.Generator().manual_seed(0)
    t = s.sample_t(8, antithetic=True, generator=g).sort().values
    gaps = t.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / 8))


def test_clipped_schedule_draws_mask_rates_inside_the_clip():
    s = create_schedule("llada_linear", clip_low=0.3, clip_high=0.8)
    p = s.mask_prob(s.sample_t(1000, generator=torch.Generator().manual_seed(0)))
    assert p.min() >= 0.3 - 1e-6 and p.max() <= 0.8 + 1e-6


def test_masking_respects_maskable_and_rate():
    g = torch.Generator().manual_seed(0)
    x0 = torch.arange(4000).reshape(2, 2000) % 50 + 10
    maskable = torch.zeros(2, 2000, dtype=torch.bool)
    maskable[:, 500:] = True
    xt, masked = mask_tokens(x0, torch.tensor([0.3, 0.9]), maskable, mask_id=3, generator=g)
    assert not masked[:, :500].any() and (xt[:, :500] == x0[:, :500]).all()
    assert (xt[masked] == 3).all() and (xt[~masked] == x0[~masked]).all()
    rate = masked[:, 500:].float().mean(1)
    assert abs(rate[0] - 0.3) < 0.05 and abs(rate[1] - 0.9) < 0.05


def test_bert_corruption_splits_the_selected_positions_80_10_10():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(10, 30, (4, 5000), generator=g)
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, :100] = False
    x0[:, :100] = 1  # a prompt token the random draw must never pick
    xt, selected = mask_tokens(x0, torch.full((4,), 0.5), maskable, mask_id=3, generator=g)
    out = bert_corruption(xt, x0, selected, maskable, random_prob=0.1, keep_prob=0.1, generator=g)
    assert (out[~selected] == x0[~selected]).all()
    n = selected.sum().item()
    as_mask = (out[selected] == 3).sum().item() / n
    changed = ((out != 3) & (out != x0) & selected).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02
    assert 0.08 < changed < 0.1  # 10 % random tokens, of which 1 in 20 draws the true token again
    assert set(out[selected & (out != 3)].unique().tolist()) <= set(range(10, 30))
    assert bert_corruption(xt, x0, selected, maskable, 0.0, 0.0, g) is xt  # off: plain masking


def test_bert_corruption_shares_are_checked_at_config_time():
    assert DiffusionConfig(random_token_prob=0.1, keep_prob=0.1).keep_prob == 0.1
    with pytest.raises(ConfigError, match="random_token_prob"):
        from_dict(DiffusionConfig, {"random_token_prob": 0.7, "keep_prob": 0.5}, "diffusion.")
    with pytest.raises(ConfigError, match="keep_prob"):
        from_dict(DiffusionConfig, {"keep_prob": -0.1}, "diffusion.")


def hand_example():
    # V = 3, head = identity, so logits = hidden. All logits 0 (CE = log 3) except row 1 pos 3,
    # whose target 2 has logit log 2 (CE = log 4 - log 2 = log 2).
    x0 = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 2]])
    maskable = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)  # answer lengths 3 and 2
    masked = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    hidden = torch.zeros(2, 4, 3)
    hidden[1, 3, 2] = math.log(2)
    weight = torch.tensor([2.0, 4.0])  # 1/p with p = 0.5, 0.25
    return hidden, x0, masked, weight, maskable


L3, L2 = math.log(3), math.log(2)


@pytest.mark.parametrize(
    "norm,expected",
    [
        ("answer", ((2 * 2 * L3) / 3 + 4 * (L3 + L2) / 2) / 2),  # per-answer sums / answer length, mean over B
        ("sequence", (4 * L3 + 4 * (L3 + L2)) / (2 * 4)),  # pre-training: / (B * L)
        ("tokens", (4 * L3 + 4 * (L3 + L2)) / 5),  # / maskable tokens
        ("masked", (4 * L3 + 4 * (L3 + L2)) / 4),  # / masked tokens
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_loss_equals_hand_computed_value(norm, expected, fused):
    hidden, x0, masked, weight, maskable = hand_example()
    head = torch.eye(3) if fused else (lambda h: h)
    out = masked_diffusion_loss(hidden, head, x0, masked, weight, maskable, norm, chunk_size=2)
    assert out.num_masked == 4 and out.num_maskable == 5
    assert abs(out.loss.item() - expected) < 1e-6


@pytest.mark.parametrize("fused", [True, False])
def test_chunked_loss_equals_full_logits_loss_and_gradients(fused):
    torch.manual_seed(0)
    model = create_backbone("llada_tiny")
    x0 = torch.randint(0, 256, (3, 20))
    maskable = torch.ones(3, 20, dtype=torch.bool)
    maskable[:, :5] = False
    xt, masked = mask_tokens(x0, torch.tensor([0.2, 0.5, 0.9]), maskable, 1, torch.Generator().manual_seed(0))
    weight = torch.tensor([5.0, 2.0, 1.1])

    hidden = model(xt, return_logits=False).hidden_states
    head = model.head_weight if fused else model.head
    ours = masked_diffusion_loss(hidden, head, x0, masked, weight, maskable, "answer", chunk_size=4).loss
    grads = torch.autograd.grad(ours, list(model.parameters()))

    logits = model(xt).logits  # naive: full (B, L, V) logits
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
    naive = ((ce * masked * weight[:, None]).sum(1) / maskable.sum(1)).mean()
    naive_grads = torch.autograd.grad(naive, list(model.parameters()))
    torch.testing.assert_close(ours, naive)
    for a, b in zip(grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_chunked_cross_entropy_counts_hits_without_grad():
    h = torch.eye(4)
    ce, hits = chunked_cross_entropy(h, lambda x: x * 10, torch.tensor([0, 1, 3, 3]), chunk_size=3)
    assert int(hits) == 3 and ce.shape == (4,)


def test_prompt_positions_never_contribute():
    torch.manual_seed(0)
    model = create_backbone("llada_tiny")
    x0 = torch.randint(4, 256, (2, 12))
    maskable = torch.zeros(2, 12, dtype=torch.bool)
    maskable[:, 6:] = True
    batch = MultimodalBatch(input_ids=x0, maskable=maskable)
    cfg = DiffusionConfig()
    seen = []
    orig = model.forward

    def spy(xt, **kw):
        seen.append(xt.clone())
        return orig(xt, **kw)

    model.forward = spy
    for seed in range(5):
        diffusion_loss(model, batch, cfg, cfg.build_schedule(), 1, torch.Generator().manual_seed(seed))
    for xt in seen:
        assert (xt[:, :6] == x0[:, :6]).all()
    assert any((xt[:, 6:] == 1).any() for xt in seen)  # answers did get masked


@pytest.mark.parametrize("fused", [True, False])
def test_zero_masked_positions_give_zero_loss_with_a_graph(fused):
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    x0 = torch.zeros(1, 3, dtype=torch.long)
    none = torch.zeros(1, 3, dtype=torch.bool)
    head = torch.eye(4).requires_grad_() if fused else (lambda h: h)
    out = masked_diffusion_loss(hidden, head, x0, none, torch.ones(1), none | True, "answer")
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert hidden.grad is not None and (hidden.grad == 0).all()


def test_fused_head_with_frozen_weight_and_bf16_inputs():
    torch.manual_seed(0)
    hidden = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(11, 8)  # frozen: no gradient requested
    y = torch.randint(0, 11, (5,))
    coeff = torch.rand(5)
    from multimodal.diffusion.linear_ce import linear_cross_entropy

    loss, ce, hits = linear_cross_entropy(hidden, w, y, coeff, chunk_size=2)
    (gh,) = torch.autograd.grad(loss, hidden)
    ref = (F.cross_entropy(hidden @ w.T, y, reduction="none") * coeff).sum()
    (gr,) = torch.autograd.grad(ref, hidden)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gh, gr)
    hb = hidden.detach().bfloat16().requires_grad_()
    loss_b, _, _ = linear_cross_entropy(hb, w.bfloat16().requires_grad_(), y, coeff, chunk_size=2)
    loss_b.backward()
    assert hb.grad.dtype == torch.bfloat16 and abs(loss_b.item() - ref.item()) < 0.1 * abs(ref.item()) + 0.05


def test_random_truncation_length():
    g = torch.Generator().manual_seed(0)
    assert random_truncation_length(100, 0.0, g) == 100
    lengths = [random_truncation_length(100, 1.0, g) for _ in range(200)]
    assert min(lengths) >= 1 and max(lengths) <= 100 and len(set(lengths)) > 50
    kept = sum(random_truncation_length(100, 0.01, g) == 100 for _ in range(2000))
    assert kept > 1900
