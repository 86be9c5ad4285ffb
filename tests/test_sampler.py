"""The generation loop and the reference policies, on hand-built logits and on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.backbone.convert import save_llada_checkpoint
from multimodal.sampling import SamplerConfig, SamplerError, SpecialIds, create_sampler, generate, infill
from multimodal.sampling.base import even_quota, gumbel_argmax
from tests.conftest import TableModel
from tests.reference_llada import reference_forward, reference_generate

MASK, EOS, EOT = 1, 2, 3
SPECIAL = SpecialIds(mask_id=MASK, eos_id=EOS, eot_id=EOT)
V = 12


def sampler(**kw):
    return create_sampler(SamplerConfig(**kw))


def peaked_table(length, tokens, confidences):
    """(length, V) logits whose argmax at position i is tokens[i] with a margin confidences[i]."""
    table = torch.zeros(length, V)
    for i, (tok, c) in enumerate(zip(tokens, confidences, strict=True)):
        table[i, tok] = c
    return table


def record_steps():
    steps = []

    def callback(info):
        steps.append(info.committed[:, info.region[0] : info.region[1]].clone())

    return steps, callback


def test_even_quota_split_and_remainder():
    q = even_quota(torch.tensor([8, 10, 3]), 4)
    assert q.tolist() == [[2, 2, 2, 2], [3, 3, 2, 2], [1, 1, 1, 0]]


@pytest.mark.parametrize("gen,steps,expected", [(8, 4, [2, 2, 2, 2]), (10, 4, [3, 3, 2, 2]), (6, 6, [1] * 6)])
def test_commit_counts_per_step(gen, steps, expected):
    table = peaked_table(3 + gen, [5] * (3 + gen), [1.0 + 0.1 * i for i in range(3 + gen)])
    commits, callback = record_steps()
    out = generate(
        TableModel(table),
        torch.tensor([[4, 4, 4]]),
        sampler(steps=steps, gen_length=gen, block_length=gen),
        SPECIAL,
        callback=callback,
    )
    assert [int(c.sum()) for c in commits] == expected
    assert out.nfe == steps and not (out.generated == MASK).any()


def test_semi_autoregressive_blocks_commit_inside_the_current_block_only():
    gen, block = 8, 4
    # the last block is the most confident, yet it must wait for the first block
    table = peaked_table(2 + gen, [5] * (2 + gen), [0, 0, 1, 1, 1, 1, 9, 9, 9, 9])
    commits, callback = record_steps()
    generate(
        TableModel(table),
        torch.tensor([[4, 4]]),
        sampler(steps=4, gen_length=gen, block_length=block),
        SPECIAL,
        callback=callback,
    )
    assert [c[0].nonzero().flatten().tolist() for c in commits] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_low_confidence_commits_most_confident_first_random_does_not():
    gen = 6
    conf = [0.5, 3.0, 1.0, 2.5, 0.2, 4.0]
    table = peaked_table(1 + gen, [6] * (1 + gen), [0.0] + conf)
    commits, callback = record_steps()
    out = generate(
        TableModel(table),
        torch.tensor([[4]]),
        sampler(steps=6, gen_length=gen, block_length=gen),
        SPECIAL,
        callback=callback,
    )
    order = [int(c[0].nonzero()) for c in commits]
    assert order == sorted(range(gen), key=lambda i: -conf[i])
    assert out.commit_step[0].tolist() == [order.index(i) for i in range(gen)]

    orders = set()
    for seed in range(6):
        commits, callback = record_steps()
        generate(
            TableModel(table),
            torch.tensor([[4]]),
            sampler(name="random", steps=6, gen_length=gen, block_length=gen),
            SPECIAL,
            generator=torch.Generator().manual_seed(seed),
            callback=callback,
        )
        orders.add(tuple(int(c[0].nonzero()) for c in commits))
    assert len(orders) > 1  # the order depends on the draw, not on the confidence


def test_classifier_free_guidance_combines_both_branches():
    c = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.9] + [0.0] * (V - 7))
    u = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0] + [0.0] * (V - 7))

    def fn(ids, attention_mask, position_ids):
        uncond = (ids[:, :2] == MASK).all(-1)  # prompt masked -> unconditional branch
        rows = torch.where(uncond[:, None], u, c)  # (B, V)
        return rows[:, None, :].expand(ids.shape[0], ids.shape[1], V).clone()

    prompt = torch.tensor([[4, 4]])
    plain = generate(TableModel(fn=fn), prompt, sampler(steps=2, gen_length=2, block_length=2), SPECIAL)
    model = TableModel(fn=fn)
    guided = generate(model, prompt, sampler(steps=2, gen_length=2, block_length=2, cfg_scale=1.0), SPECIAL)
    assert plain.generated.tolist() == [[5, 5]]
    assert guided.generated.tolist() == [[6, 6]]  # u + 2 (c - u) = [.., 1, 1.8]
    assert model.calls[0].shape[0] == 2  # both branches in one forward


def test_forbid_eos_and_eos_lowest_confidence():
    gen = 4
    # EOS is the most confident candidate at gen positions 0 and 1 (logit 20: sampled almost surely at T = 1)
    table = peaked_table(1 + gen, [7, EOS, EOS, 8, 9], [0, 20.0, 19.0, 12.0, 11.0])
    table[1, 10] = 4.0  # runner-up at the EOS positions
    table[2, 10] = 3.0
    base = dict(steps=4, gen_length=gen, block_length=gen)
    out = generate(TableModel(table), torch.tensor([[4]]), sampler(**base, forbid_eos=True), SPECIAL)
    assert out.generated.tolist() == [[10, 10, 8, 9]]

    commits, callback = record_steps()
    generate(TableModel(table), torch.tensor([[4]]), sampler(**base), SPECIAL, callback=callback)
    assert [int(c[0].nonzero()) for c in commits] == [0, 1, 2, 3]
    for temperature in (0.0, 1.0):  # the released flag has no effect at T > 0; ours does
        commits, callback = record_steps()
        out = generate(
            TableModel(table),
            torch.tensor([[4]]),
            sampler(**base, eos_lowest_confidence=True, temperature=temperature),
            SPECIAL,
            generator=torch.Generator().manual_seed(0),
            callback=callback,
        )
        assert out.generated.tolist() == [[EOS, EOS, 8, 9]]
        assert [int(c[0].nonzero()) for c in commits] == [2, 3, 0, 1]


def test_stop_at_eos_fills_the_rest_and_skips_later_blocks():
    gen = 8
    table = peaked_table(1 + gen, [6, 7, EOS, 8, 8, 8, 8, 8, 8], [0, 2.0, 9.0, 1, 1, 1, 1, 1, 1])
    model = TableModel(table)
    out = generate(
        model, torch.tensor([[4]]), sampler(steps=8, gen_length=gen, block_length=2, stop_at_eos=True), SPECIAL
    )
    assert out.generated.tolist() == [[7, EOS] + [EOS] * 6]
    assert out.nfe == 2 and len(model.calls) == 2
    assert out.commit_step[0, 2:].tolist() == [0] * 6  # filled when the EOS was committed


def test_a_chat_end_of_turn_stops_like_eos():
    gen = 8
    table = peaked_table(1 + gen, [6, 7, EOT, 8, 8, 8, 8, 8, 8], [0, 2.0, 9.0, 1, 1, 1, 1, 1, 1])
    model = TableModel(table)
    out = generate(
        model, torch.tensor([[4]]), sampler(steps=8, gen_length=gen, block_length=2, stop_at_eos=True), SPECIAL
    )
    assert out.generated.tolist() == [[7, EOT] + [EOS] * 6]  # the answer's end, then EOS padding
    assert out.nfe == 2


def tiny_model(seed=0, preset="llada_tiny"):
    torch.manual_seed(seed)
    return create_backbone(backbone_preset(preset, max_seq_len=128, init_std=0.2)).eval()


def test_padded_batch_equals_per_sample_results():
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    s = sampler(steps=8, gen_length=16, block_length=8)
    batch = generate(model, prompts, s, SPECIAL)
    for i, p in enumerate(prompts):
        alone = generate(model, torch.tensor([p]), s, SPECIAL)
        assert batch.generated[i].tolist() == alone.generated[0].tolist()
        assert batch.commit_step[i].tolist() == alone.commit_step[0].tolist()


@pytest.mark.parametrize("steps,gen,block,cfg", [(16, 16, 16, 0.0), (8, 16, 4, 0.0), (16, 16, 8, 0.5)])
def test_temperature_zero_matches_the_reference_generate(tmp_path, steps, gen, block, cfg):
    model = tiny_model(seed=3, preset="llada_tiny_gqa")
    save_llada_checkpoint(model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    prompt = torch.tensor([[17, 42, 99, 7, 250, 31]])

    ref_x, ref_order = reference_generate(
        lambda x: reference_forward(state, config, x), prompt, steps, gen, block, MASK, cfg_scale=cfg
    )
    commits, callback = record_steps()
    out = generate(
        model,
        prompt,
        sampler(steps=steps, gen_length=gen, block_length=block, cfg_scale=cfg),
        SPECIAL,
        callback=callback,
    )
    assert out.sequences.tolist() == ref_x.tolist()
    ours = [sorted((c[0].nonzero().flatten() + prompt.shape[1]).tolist()) for c in commits]
    assert ours == ref_order


def test_shape_errors_are_one_clear_line():
    model = tiny_model()
    with pytest.raises(SamplerError, match="gen_length 10 is not divisible by block_length 4"):
        generate(model, [[5]], sampler(steps=4, gen_length=10, block_length=4), SPECIAL)
    with pytest.raises(SamplerError, match="steps 5 is not divisible by the number of blocks 2"):
        generate(model, [[5]], sampler(steps=5, gen_length=8, block_length=4), SPECIAL)
    with pytest.raises(SamplerError, match="exceeds the model context of 128"):
        generate(model, [[5] * 120], sampler(steps=16, gen_length=16, block_length=16), SPECIAL)
    with pytest.raises(SamplerError, match="positive"):
        SamplerConfig(steps=0)


def test_infill_keeps_given_tokens_and_fills_masks():
    model = tiny_model()
    ids = torch.tensor([[5, MASK, 7, MASK, MASK, 10, 11, MASK]])
    out = infill(model, ids, sampler(steps=4), SPECIAL)
    given = ids != MASK
    assert (out.sequences[given] == ids[given]).all()
    assert not (out.sequences == MASK).any() and out.nfe == 4
    blockwise = infill(model, ids, sampler(steps=4), SPECIAL, block_length=4)
    assert (blockwise.commit_step[0, 1] < blockwise.commit_step[0, 7]).item()


def test_temperature_sampling_is_reproducible_and_float64_gumbel_matches_softmax():
    model = tiny_model()
    s = sampler(steps=8, gen_length=8, block_length=8, temperature=1.0)
    a = generate(model, [[5, 6]], s, SPECIAL, generator=torch.Generator().manual_seed(1))
    b = generate(model, [[5, 6]], s, SPECIAL, generator=torch.Generator().manual_seed(1))
    assert a.generated.tolist() == b.generated.tolist()

    logits = torch.log(torch.tensor([1.0, 2.0, 3.0])).expand(40000, 3)
    g = torch.Generator().manual_seed(0)
    for temp, probs in ((1.0, [1 / 6, 2 / 6, 3 / 6]), (0.5, [1 / 14, 4 / 14, 9 / 14])):
        freq = torch.bincount(gumbel_argmax(logits, temp, g), minlength=3).double() / 40000
        assert torch.allclose(freq, torch.tensor(probs, dtype=torch.float64), atol=0.01), (temp, freq)
    assert math.isclose(float(gumbel_argmax(logits[:1], 0.0, g)), 2)


@pytest.mark.parametrize("name", __import__("multimodal.sampling", fromlist=["SAMPLERS"]).SAMPLERS.names())
def test_every_registered_sampler_decodes_a_padded_batch(name):
    from multimodal.sampling import sampler_config_class

    model = tiny_model()
    cfg = sampler_config_class(name)(name=name, steps=4, gen_length=8, block_length=4)
    out = generate(model, [[5, 6, 7], [9]], create_sampler(cfg), SPECIAL, generator=torch.Generator().manual_seed(0))
    assert out.generated.shape == (2, 8) and not (out.generated == MASK).any()
    assert out.commit_step.min() >= 0


def test_overrides_merge_in_one_place_and_loop_settings_stay_apart():
    from multimodal.config import ConfigError
    from multimodal.sampling import LOOP_FIELDS, LoopSettings, merge_sampler
    from multimodal.sampling.threshold import ThresholdConfig

    base = SamplerConfig(steps=32, gen_length=64, block_length=16, temperature=0.5, cache="dual")
    switched = merge_sampler(base, {"name": "threshold", "threshold": 0.7})
    assert isinstance(switched, ThresholdConfig) and switched.threshold == 0.7
    assert (switched.steps, switched.block_length, switched.temperature, switched.cache) == (32, 16, 0.5, "dual")
    assert merge_sampler(base, {}) == base
    with pytest.raises(ConfigError, match="sampler.temprature"):
        merge_sampler(base, {"temprature": 1.0})
    with pytest.raises(ConfigError, match="sampler.cache is the server's setting \\('dual'\\)"):
        merge_sampler(base, {"cache": "none"}, fixed=LOOP_FIELDS)
    with pytest.raises(ConfigError, match="not divisible by block_length"):
        merge_sampler(base, {"gen_length": 24})
    assert base.loop == LoopSettings(block_length=16, cache="dual") and type(base.loop) is LoopSettings
    assert set(LOOP_FIELDS) == {"block_length", "cache", "attention", "cfg_scale", "compile", "refresh_every"}
