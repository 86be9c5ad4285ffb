"""The post-training losses on hand-built numbers: diffu-GRPO's clipped surrogate, k3 KL, advantages,
completion and prompt masks; VRPO's preference score, DPO loss and ELBO estimators."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal.diffusion.grpo import completion_mask, group_advantages, grpo_loss, prompt_masked_view
from multimodal.diffusion.preference import copies_elbo, dpo_loss, draw_copies, preference_score
from multimodal.diffusion.schedule import create_schedule
from multimodal.types import BackboneOutput, MultimodalBatch


def _hand_grpo(lp, old, ref, adv, mask, eps, beta):
    total, count = 0.0, 0
    for i, row in enumerate(lp):
        for k, l_value in enumerate(row):
            if not mask[i][k]:
                continue
            ratio = math.exp(l_value - old[i][k])
            surrogate = min(ratio * adv[i], min(max(ratio, 1 - eps), 1 + eps) * adv[i])
            d = ref[i][k] - l_value
            total += -surrogate + beta * (math.exp(d) - d - 1)
            count += 1
    return total / count


def test_grpo_loss_matches_the_formula_token_by_token():
    lp = [[-0.2, -1.5, -0.7], [-2.0, -0.1, -0.3]]
    old = [[-0.9, -1.0, -0.7], [-1.0, -0.4, -3.0]]  # ratios above and below the clip range
    ref = [[-0.5, -1.2, -0.6], [-1.7, -0.2, -0.3]]
    adv = [0.8, -0.5]
    mask = [[True, True, False], [True, True, True]]  # the first row stops after its second token
    out = grpo_loss(
        torch.tensor(lp, requires_grad=True),
        torch.tensor(old),
        torch.tensor(ref),
        torch.tensor(adv),
        torch.tensor(mask),
        clip_eps=0.2,
        beta=0.04,
    )
    assert float(out.loss.detach()) == pytest.approx(_hand_grpo(lp, old, ref, adv, mask, 0.2, 0.04), rel=1e-5)
    assert 0 < out.clipped < 1 and out.kl > 0


def test_grpo_with_one_inner_update_is_the_policy_gradient_plus_kl():
    # mu = 1: the old policy is the current one (ratio 1), so d loss / d logp = (-A + beta (1 - e^(r - l))) / n
    lp = torch.tensor([[-0.3, -1.1], [-0.6, -2.0]], requires_grad=True)
    ref = torch.tensor([[-0.4, -1.0], [-0.6, -1.0]])
    adv, mask, beta = torch.tensor([1.0, -2.0]), torch.ones(2, 2, dtype=torch.bool), 0.1
    out = grpo_loss(lp, lp.detach(), ref, adv, mask, clip_eps=0.5, beta=beta)
    out.loss.backward()
    expected = (-adv[:, None] + beta * (1 - torch.exp(ref - lp.detach()))) / 4
    torch.testing.assert_close(lp.grad, expected)
    assert out.ratio == pytest.approx(1.0) and out.clipped == 0.0


def test_grpo_without_kl_needs_no_reference_and_with_it_refuses_none():
    lp = torch.zeros(1, 2, requires_grad=True)
    out = grpo_loss(lp, lp.detach(), None, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), 0.5, 0.0)
    assert float(out.loss.detach()) == pytest.approx(-1.0) and out.kl == 0.0
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(lp, lp.detach(), None, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), 0.5, 0.04)


def test_group_advantages_subtract_the_group_mean_and_optionally_divide_by_its_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(group_advantages(rewards, 3), torch.tensor([2, -1, -1, 0, 0, 0]) / 3)
    scaled = group_advantages(rewards, 3, scale=True)
    std = torch.tensor([1.0, 0.0, 0.0]).std()
    torch.testing.assert_close(scaled[:3], torch.tensor([2, -1, -1]) / 3 / (std + 1e-4))
    assert torch.all(scaled[3:] == 0)  # a group with equal rewards gives no signal either way
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4)


def test_completion_mask_ends_at_the_first_stop_token_inclusive():
    eos, eot = 2, 9
    generated = torch.tensor([[5, 6, 2, 2], [5, 9, 6, 2], [5, 6, 7, 8]])
    expected = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert completion_mask(generated, {eos, eot}).int().tolist() == expected


def test_prompt_mask_rate_and_what_may_never_be_masked():
    torch.manual_seed(0)
    ids = torch.randint(5, 15, (64, 400))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :20] = False  # left padding
    maskable[:, 50] = False  # an image placeholder
    maskable[:, 300:] = False  # the completion
    view = prompt_masked_view(ids, maskable, (300, 400), 1, 0.15, torch.Generator().manual_seed(1))
    masked = view == 1
    assert masked[:, 300:].all()  # the completion, all of it
    assert not masked[:, :20].any() and not masked[:, 50].any()
    rate = float(masked[:, 20:300][:, [c for c in range(280) if c != 30]].float().mean())
    assert rate == pytest.approx(0.15, abs=0.005)  # 17.8k prompt tokens: the standard error is 0.0027
    assert torch.equal(view[~masked], ids[~masked])


def test_preference_score_and_dpo_loss_by_hand():
    s = preference_score(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5]), 0.2)
    expected = 0.2 * ((-3.0 + 4.0) - (-5.0 + 4.5))
    assert float(s.score) == pytest.approx(expected)
    assert float(dpo_loss(s)) == pytest.approx(math.log1p(math.exp(-expected)))


class _PositionModel(torch.nn.Module):
    """Logits that depend on the position only: the ELBO of any answer is then exactly its log-likelihood."""

    def __init__(self, length: int, vocab: int) -> None:
        super().__init__()
        self.table = torch.randn(length, vocab, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids, attention_mask=None, position_ids=None, return_logits=True, media=None):
        return BackboneOutput(None, hidden_states=self.table.expand(input_ids.shape[0], -1, -1))

    def head(self, h):
        return h


@pytest.mark.parametrize("estimator", ["count", "rate"])
def test_both_elbo_estimators_are_unbiased_for_a_context_free_model(estimator):
    model = _PositionModel(10, 7)
    ids = torch.tensor([[3, 4, 1, 6, 2, 0, 5, 5, 2, 2], [4, 4, 4, 3, 2, 1, 0, 6, 6, 6]])
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[0, 3:] = True
    maskable[1, 6:] = True
    batch = MultimodalBatch(input_ids=ids, maskable=maskable)
    exact = (torch.log_softmax(model.table, -1).gather(1, ids.T).T * maskable).sum(1)
    schedule = create_schedule("llada_linear", 1e-3, None, None, 0.15)
    copies = draw_copies(
        batch, 15, timesteps=4000, estimator=estimator, schedule=schedule, generator=torch.Generator().manual_seed(0)
    )
    assert copies.masked.sum(1).min() >= (1 if estimator == "count" else 0)
    assert not copies.masked[~maskable.repeat_interleave(4000, 0)].any()  # prompts are never masked
    torch.testing.assert_close(copies_elbo(model, batch, copies), exact, rtol=0.03, atol=0.0)


def test_one_mask_per_timestep_beats_many_masks_per_timestep_at_equal_budget():
    # VRPO's allocation result on a context-free model: Var(n_t = 8, n_mask = 1) < Var(n_t = 1, n_mask = 8)
    model = _PositionModel(12, 9)
    ids = torch.randint(0, 9, (1, 12), generator=torch.Generator().manual_seed(2))
    batch = MultimodalBatch(input_ids=ids, maskable=torch.ones_like(ids, dtype=torch.bool))
    schedule = create_schedule("llada_linear", 1e-3, None, None, 0.15)

    def spread(timesteps: int, masks: int) -> float:
        g = torch.Generator().manual_seed(3)
        values = [
            float(
                copies_elbo(
                    model,
                    batch,
                    draw_copies(
                        batch, 99, timesteps=timesteps, masks_per_timestep=masks, estimator="rate", schedule=schedule,
                        generator=g,
                    ),
                )
            )
            for _ in range(300)
        ]  # fmt: skip
        return float(torch.tensor(values).var())

    assert spread(8, 1) < spread(1, 8)
