"""Parallel commit policies and KV caches on the one loop."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.sampling import SamplerError, SpecialIds, create_sampler, generate, sampler_config_class
from multimodal.sampling.dilated import dilation_groups
from tests.conftest import TableModel

MASK, EOS = 1, 2
SPECIAL = SpecialIds(mask_id=MASK, eos_id=EOS)
V = 12


def sampler(name="low_confidence", **kw):
    return create_sampler(sampler_config_class(name)(name=name, **kw))


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return create_backbone(backbone_preset("llada_tiny_gqa", max_seq_len=128, init_std=0.2, **kw)).eval()


def commit_log():
    steps = []

    def callback(info):
        steps.append(info.committed[:, info.region[0] : info.region[1]].clone())

    return steps, callback


def prob_table(length, probs):
    """(length, V) logits giving the candidate (token 5) probability probs[i] at position i."""
    table = torch.zeros(length, V)
    for i, p in enumerate(probs):
        # p = e^a / (e^a + V - 1)  =>  a = log(p (V - 1) / (1 - p))
        table[i, 5] = torch.log(torch.tensor(p * (V - 1) / (1 - p)))
    return table


@pytest.mark.parametrize("name,knob", [("threshold", {"threshold": 1.5}), ("factor", {"factor": 0.0})])
def test_parallel_policies_with_commit_all_off_reduce_to_the_reference(name, knob):
    model = tiny()
    prompt = [[17, 42, 99, 7]]
    ref = generate(model, prompt, sampler(steps=16, gen_length=16, block_length=8), SPECIAL)
    out = generate(model, prompt, sampler(name, steps=16, gen_length=16, block_length=8, **knob), SPECIAL)
    assert out.sequences.tolist() == ref.sequences.tolist()
    assert out.commit_step.tolist() == ref.commit_step.tolist() and out.nfe == 16


def test_threshold_commits_everything_confident_and_at_least_one():
    probs = [0.95, 0.5, 0.92, 0.3, 0.6, 0.4]
    commits, callback = commit_log()
    out = generate(
        TableModel(prob_table(7, [0.5] + probs)),
        [[4]],
        sampler("threshold", steps=6, gen_length=6, block_length=6, threshold=0.9),
        SPECIAL,
        callback=callback,
    )
    # step 1: the two above 0.9; later steps: one each (the table never changes), best first
    assert commits[0][0].nonzero().flatten().tolist() == [0, 2]
    assert [int(c.sum()) for c in commits] == [2, 1, 1, 1, 1] and out.nfe == 5


def test_factor_rule_commits_the_longest_passing_prefix():
    # sorted: 0.95 (rank 1, always), 0.8 >= 1 - 1/3, 0.74 >= 1 - 1/4 fails -> commit 2
    probs = [0.8, 0.95, 0.74, 0.3]
    commits, callback = commit_log()
    generate(
        TableModel(prob_table(5, [0.5] + probs)),
        [[4]],
        sampler("factor", steps=4, gen_length=4, block_length=4, factor=1.0),
        SPECIAL,
        callback=callback,
    )
    assert commits[0][0].nonzero().flatten().tolist() == [0, 1]


def test_entropy_bounded_budget():
    # entropies (nats) 0.08, 1.63, 0.15, 0.21: the three certain ones spend 0.08 + 0.15 beyond the largest
    probs = [0.99, 0.6, 0.98, 0.97]
    commits, callback = commit_log()
    generate(
        TableModel(prob_table(5, [0.5] + probs)),
        [[4]],
        sampler("entropy_bounded", steps=4, gen_length=4, block_length=4, gamma=0.3),
        SPECIAL,
        callback=callback,
    )
    assert commits[0][0].nonzero().flatten().tolist() == [0, 2, 3]  # the uncertain one waits
    commits, callback = commit_log()
    generate(
        TableModel(prob_table(5, [0.5] + probs)),
        [[4]],
        sampler("entropy_bounded", steps=4, gen_length=4, block_length=4, gamma=0.0),
        SPECIAL,
        callback=callback,
    )
    assert [int(c.sum()) for c in commits] == [1, 1, 1, 1]


def test_dilated_groups_and_schedule():
    assert dilation_groups(8).tolist() == [0, 2, 1, 2, 0, 2, 1, 2]
    commits, callback = commit_log()
    out = generate(
        tiny(), [[5, 6]], sampler("dilated", steps=16, gen_length=16, block_length=8), SPECIAL, callback=callback
    )
    assert out.nfe == 6 and not (out.generated == MASK).any()  # log2(8) = 3 steps per block
    assert [c[0].nonzero().flatten().tolist() for c in commits[:3]] == [[0, 4], [2, 6], [1, 3, 5, 7]]


def test_first_hitting_unmasks_one_token_per_call():
    commits, callback = commit_log()
    out = generate(
        tiny(),
        [[5, 6]],
        sampler("first_hitting", steps=2, gen_length=12, block_length=12),
        SPECIAL,
        generator=torch.Generator().manual_seed(0),
        callback=callback,
    )
    assert out.nfe == 12 and all(int(c.sum()) == 1 for c in commits)


@pytest.mark.parametrize("cache", ["prefix", "dual", "block"])
@pytest.mark.parametrize("policy", [("low_confidence", {}), ("threshold", {"threshold": 0.3})])
def test_caches_give_the_uncached_tokens_under_block_causal_attention(cache, policy):
    model = tiny(seed=2)
    name, knob = policy
    base = dict(steps=12, gen_length=24, block_length=8, attention="block_causal", **knob)
    ref = generate(model, [[9, 8, 7, 6, 5]], sampler(name, **base), SPECIAL)
    out = generate(model, [[9, 8, 7, 6, 5]], sampler(name, cache=cache, **base), SPECIAL)
    assert out.sequences.tolist() == ref.sequences.tolist()
    assert out.commit_step.tolist() == ref.commit_step.tolist()


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batched_mixed_lengths_with_caches_equal_decoding_alone(cache):
    model = tiny(seed=1)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    cfg = dict(steps=24, gen_length=24, block_length=8, cache=cache, threshold=0.2, stop_at_eos=True, cfg_scale=0.5)
    batch = generate(model, prompts, sampler("threshold", **cfg), SPECIAL)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], sampler("threshold", **cfg), SPECIAL)
        assert batch.generated[i].tolist() == alone.generated[0].tolist()


def test_prefix_and_dual_caches_save_work_and_stay_close_with_full_attention():
    model = tiny(seed=4)
    base = dict(steps=32, gen_length=32, block_length=8)
    ref = generate(model, [[9, 8, 7]], sampler(**base), SPECIAL)
    for cache in ("prefix", "dual"):
        out = generate(model, [[9, 8, 7]], sampler(cache=cache, **base), SPECIAL)
        assert out.nfe == ref.nfe and not (out.generated == MASK).any()


def test_cache_config_errors():
    with pytest.raises(SamplerError, match="exact only with attention 'block_causal'"):
        sampler(cache="block")
    with pytest.raises(SamplerError, match="threshold must be positive"):
        sampler("threshold", threshold=0.0)


def test_delayed_cache_refreshing_every_step_is_the_uncached_loop():
    model = tiny(seed=5)
    base = dict(steps=16, gen_length=16, block_length=8)
    ref = generate(model, [[9, 8, 7]], sampler(**base), SPECIAL)
    out = generate(model, [[9, 8, 7]], sampler(cache="delayed", refresh_every=1, **base), SPECIAL)
    assert out.sequences.tolist() == ref.sequences.tolist()


@pytest.mark.parametrize("policy", [("low_confidence", {}), ("threshold", {"threshold": 0.2})])
def test_delayed_cache_batched_mixed_lengths_equal_decoding_alone(policy):
    model = tiny(seed=6)
    name, knob = policy
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    cfg = dict(steps=24, gen_length=24, block_length=8, cache="delayed", refresh_every=4, stop_at_eos=True, **knob)
    batch = generate(model, prompts, sampler(name, **cfg), SPECIAL)
    assert not (batch.generated == MASK).any()
    for i, p in enumerate(prompts):
        alone = generate(model, [p], sampler(name, **cfg), SPECIAL)
        assert batch.generated[i].tolist() == alone.generated[0].tolist()
