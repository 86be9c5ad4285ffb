"""The Monte-Carlo ELBO and rolling perplexity on models whose bound is known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal.diffusion.likelihood import elbo, rolling_perplexity, stratified_mask_counts

MASK, V = 0, 6


def log_p_target(a: float) -> float:
    """log-probability of a target with logit a among V - 1 zero logits."""
    return a - math.log(math.exp(a) + V - 1)


def make_model(answer: torch.Tensor, prompt_len: int, dependence: float, slope: float = 0.1):
    """Logit of the true token at answer position i = 1 + slope i + dependence * (#masked answer tokens)."""

    def logits_fn(xt):
        b, n = xt.shape
        m = (xt[:, prompt_len:] == MASK).sum(1).float()  # (B,)
        out = torch.zeros(b, n, V)
        for i, tok in enumerate(answer.tolist()):
            out[:, prompt_len + i, tok] = 1.0 + slope * i + dependence * m
        return out

    return logits_fn


def exact_elbo(length: int, dependence: float) -> float:
    # E_k E_S [L/k sum_{i in S} f(i,k)] = (1/L) sum_k sum_i f(i,k), k uniform on 1..L
    return (
        sum(log_p_target(1.0 + 0.1 * i + dependence * k) for k in range(1, length + 1) for i in range(length)) / length
    )


def test_stratified_counts_are_spread_over_one_to_l():
    k = stratified_mask_counts(10, 10, torch.Generator().manual_seed(0))
    assert sorted(k.tolist()) == list(range(1, 11))
    k = stratified_mask_counts(7, 32, torch.Generator().manual_seed(1))
    assert k.min() >= 1 and k.max() <= 7


def test_elbo_of_a_factorised_model_is_its_log_likelihood():
    prompt, answer = torch.tensor([3, 4]), torch.tensor([1, 2, 5, 3, 2])
    # same distribution at every position: every single draw equals the log-likelihood
    est = elbo(
        make_model(answer, 2, 0.0, slope=0.0),
        prompt,
        answer,
        MASK,
        mc_num=64,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
    )
    assert abs(est.log_likelihood - 5 * log_p_target(1.0)) < 1e-5 and est.stderr < 1e-5
    assert est.num_tokens == 5 and est.num_draws == 64
    # position-dependent but context-free: the ELBO equals the log-likelihood in expectation
    est = elbo(
        make_model(answer, 2, 0.0),
        prompt,
        answer,
        MASK,
        mc_num=2048,
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
    )
    truth = sum(log_p_target(1.0 + 0.1 * i) for i in range(5))
    assert 0 < est.stderr < 0.01 and abs(est.log_likelihood - truth) < 4 * est.stderr


def test_elbo_is_unbiased_for_a_context_dependent_model():
    prompt, answer = torch.tensor([3]), torch.tensor([1, 2, 5, 3, 2, 4])
    truth = exact_elbo(6, dependence=-0.4)
    est = elbo(
        make_model(answer, 1, -0.4),
        prompt,
        answer,
        MASK,
        mc_num=4096,
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
    )
    assert est.stderr > 0
    assert abs(est.log_likelihood - truth) < 4 * est.stderr, (est, truth)
    # a single draw of one mask count would be far off: the estimator really averages over k
    assert abs(log_p_target(1.0 - 0.4) * 6 - truth) > 10 * est.stderr


def test_rolling_perplexity_of_a_context_free_model():
    ids = torch.tensor([1, 2, 3, 4, 5] * 6)

    def logits_fn(xt):
        out = torch.zeros(*xt.shape, V)
        out[..., 1:] = 0.5  # every position: same distribution, ids 1..5 equally likely
        return out

    ppl = rolling_perplexity(
        logits_fn, ids, MASK, window=8, stride=4, mc_num=8, batch_size=8, generator=torch.Generator().manual_seed(0)
    )
    p = math.exp(0.5) / (1 + 5 * math.exp(0.5))
    assert ppl.num_tokens == 30 and ppl.num_windows == 1 + math.ceil((30 - 8) / 4)
    assert abs(ppl.perplexity - 1 / p) < 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty answer"):
        elbo(lambda x: x, torch.tensor([1]), torch.tensor([], dtype=torch.long), MASK)
    with pytest.raises(ValueError, match="stride"):
        rolling_perplexity(lambda x: x, torch.tensor([1, 2]), MASK, window=4, stride=8)
