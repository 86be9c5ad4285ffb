"""Continuous batching: a sequence decodes the same tokens alone and among others joining and leaving."""

from __future__ import annotations

import itertools

import pytest
import torch

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.model import MultimodalDiffusionModel
from multimodal.sampling import SamplerConfig, SamplerError, SpecialIds, create_sampler, generate, sampler_config_class
from multimodal.sampling.batching import ContinuousBatch, Row, partition, span
from multimodal.types import MediaFeatures

V = 256
SPECIAL = SpecialIds(mask_id=V - 1, eos_id=V - 2)


@pytest.fixture(scope="module", params=["llada_tiny", "llada_tiny_moe", "dream_tiny", "llada2_tiny"])
def model(request):
    """Each family's tiny preset: continuous batching takes every family unchanged (Dream's shifted
    outputs through every cache)."""
    torch.manual_seed(0)
    return create_backbone(backbone_preset(request.param, max_seq_len=128, init_std=0.2)).eval()


def config(name="low_confidence", **fields):
    return sampler_config_class(name)(name=name, block_length=8, **fields)


def requests(shared: dict):
    """Mixed prompt lengths, answer lengths, steps, policies, temperatures and EOS rules."""
    g = torch.Generator().manual_seed(5)
    prompt = lambda n: torch.randint(3, V - 3, (n,), generator=g).tolist()  # noqa: E731
    return [
        (prompt(5), config(steps=8, gen_length=16, **shared), 1),
        (prompt(11), config("random", steps=12, gen_length=24, temperature=0.8, **shared), 2),
        (prompt(3), config("threshold", steps=8, gen_length=8, threshold=0.3, **shared), 3),
        (prompt(7), config(steps=16, gen_length=32, stop_at_eos=True, temperature=0.5, **shared), 4),
        (prompt(4), config(steps=32, gen_length=16, temperature=0.7, **shared), 5),  # more steps than tokens
    ]


def alone(model, prompt, cfg, seed, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    return generate(model, [prompt], create_sampler(cfg), SPECIAL, generator=gen, **kwargs).generated[0]


@pytest.mark.parametrize(
    "shared",
    [
        {},
        {"cache": "dual"},
        {"cache": "prefix"},
        {"cache": "delayed", "refresh_every": 3},
        {"cache": "block", "attention": "block_causal"},
        {"cfg_scale": 0.5},
    ],
    ids=["none", "dual", "prefix", "delayed", "block", "guidance"],
)
@pytest.mark.parametrize("call_columns", [0, 10**9], ids=["groups", "one-canvas"])
def test_rows_joining_and_leaving_decode_as_alone(model, shared, call_columns):
    todo = requests(shared)
    cfg = config(steps=8, gen_length=8, **shared)
    batch = ContinuousBatch(model, SPECIAL, cfg, pad_id=0, max_rows=3, call_columns=call_columns)
    rows, groups = [], 0
    joins = {0: 2, 1: 1, 2: 1, 4: 1}  # two at the start, then one at each of three later boundaries
    for cycle in range(40):
        for _ in range(joins.get(cycle, 0)):
            prompt, cfg, seed = todo.pop(0)
            rows.append(batch.add(Row(prompt, create_sampler(cfg), torch.Generator().manual_seed(seed))))
        batch.step()
        groups = max(groups, len(batch.groups))
        if batch.idle and not todo:
            break
    assert batch.idle and len(rows) == 5
    assert groups > 1 if call_columns == 0 else groups == 1
    for r in rows:  # every answer position committed (random weights may commit the mask id itself)
        assert r.finished and ((r.commit_step >= 0) | (r.answer == SPECIAL.mask_id)).all()
    for r in rows:
        assert torch.equal(r.answer, alone(model, r.prompt, r.config, r.generator.initial_seed())), r.config


def test_media_rows_take_their_own_features(model):
    from tests.test_model import Fake

    torch.manual_seed(1)
    mm = MultimodalDiffusionModel(model, {"image": Fake()}, {"image": 7}).eval()
    cfg = config(steps=8, gen_length=16)
    batch = ContinuousBatch(mm, SPECIAL, cfg, max_rows=4)
    items = [([5, 7, 7, 9], torch.randn(1, 1, 2, 3)), ([6, 10, 7, 7, 7, 11], torch.randn(1, 1, 3, 3)), ([8, 9], None)]
    rows = []
    for prompt, pixels in items:
        media = None
        if pixels is not None:
            feats, masks, _ = mm.encode({"image": pixels}, {"image": torch.ones(1, 1, dtype=torch.bool)})
            media = MediaFeatures(feats, masks)
        rows.append(batch.add(Row(prompt, create_sampler(cfg), media=media)))
    batch.run()
    for r in rows:
        assert torch.equal(r.answer, generate(mm, [r.prompt], create_sampler(cfg), SPECIAL, media=r.media).generated[0])


def test_a_cancelled_row_leaves_and_a_waiting_one_takes_its_place(model):
    cfg = config(steps=12, gen_length=24)
    batch = ContinuousBatch(model, SPECIAL, cfg, max_rows=2)
    a, b, c = (batch.add(Row([9, 8, 7 + i], create_sampler(cfg))) for i in range(3))
    events = []
    c.on_step = lambda row, positions, tokens: events.append((positions, tokens))
    batch.step()
    assert batch.active == [a, b] and batch.waiting == [c]  # two slots
    a.cancelled = True
    batch.step()
    assert batch.active == [b, c] and a.block == 1  # a left at the boundary, c joined
    batch.run()
    assert b.finished and c.finished and not a.finished
    assert sum(len(p) for p, _ in events) == 24 and torch.equal(c.answer, alone(model, c.prompt, cfg, 0))


def test_rows_that_cannot_run_are_refused(model):
    batch = ContinuousBatch(model, SPECIAL, config(steps=8, gen_length=8))
    with pytest.raises(SamplerError, match="block_length 16 differs"):
        batch.add(Row([1, 2], create_sampler(SamplerConfig(steps=8, gen_length=16, block_length=16))))
    with pytest.raises(SamplerError, match="exceeds the model context of 128"):
        batch.add(Row(list(range(3, 123)), create_sampler(config(steps=8, gen_length=16))))
    with pytest.raises(SamplerError, match="mask token"):
        batch.add(Row([1, V - 1], create_sampler(config(steps=8, gen_length=8))))


def test_noise_free_rows_with_equal_settings_share_one_sampler_call(model, monkeypatch):
    from multimodal.sampling.low_confidence import LowConfidenceSampler

    calls = []
    original = LowConfidenceSampler.step
    monkeypatch.setattr(
        LowConfidenceSampler,
        "step",
        lambda self, logits, *a, **k: calls.append(len(logits)) or original(self, logits, *a, **k),
    )
    batch = ContinuousBatch(model, SPECIAL, config(steps=8, gen_length=8), max_rows=4)
    rows = [
        batch.add(
            Row(
                [9, 8, 7][: 1 + i % 3] + [5] * i,
                create_sampler(config(steps=8 * (1 + i % 2), gen_length=8 * (1 + i % 2))),
            )
        )
        for i in range(4)
    ]
    batch.step()
    assert calls == [4] * 8  # the first block: one call of four rows per step (steps per block are equal)
    batch.run()
    for r in rows:
        assert torch.equal(r.answer, alone(model, r.prompt, r.config, 0))


def cutting_cost(groups, block_length, call_columns, limit):
    """Columns a cutting computes, each call charged at least `call_columns` (inf if a shared canvas is too wide)."""
    widths = [sum(span(grp, block_length)) + block_length for grp in groups]
    if any(w > limit and len(grp) > 1 for w, grp in zip(widths, groups, strict=True)):
        return float("inf")
    return sum(max(len(grp) * w, call_columns) for grp, w in zip(groups, widths, strict=True))


def test_partition_finds_the_cheapest_cutting():
    """Against every contiguous cutting of the sorted rows: the chosen one costs least, and no shared
    canvas is wider than the limit."""
    g = torch.Generator().manual_seed(3)
    for trial in range(30):
        rows = []
        for _ in range(int(torch.randint(1, 8, (1,), generator=g))):
            p, blocks = int(torch.randint(1, 60, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
            block = int(torch.randint(0, blocks, (1,), generator=g))
            rows.append(Row(list(range(3, 3 + p)), None, tokens=torch.zeros(p + 8 * blocks), block=block))
        call_columns, limit = [0, 200, 10**6][trial % 3], 120
        chosen = partition(rows, 8, call_columns, limit)
        order = [r for grp in chosen for r in grp]  # the sorted rows
        assert sorted(map(id, order)) == sorted(map(id, rows))
        best = min(
            cutting_cost(
                [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True)], 8, call_columns, limit
            )
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
        )
        assert cutting_cost(chosen, 8, call_columns, limit) == best
