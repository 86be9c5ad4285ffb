"""ASR deliberation: masking ratio, lowest-probability picks, chunks, and a refill that repairs errors."""

from __future__ import annotations

import torch

from multimodal.sampling import SpecialIds
from multimodal.sampling.engine import Engine
from multimodal.tokenizer import BuiltinTokenizer
from tasks.deliberation import DeliberationConfig, chunk_masks, deliberate, select_lowest
from tasks.digits import DigitsConfig, DigitsTask
from tests.conftest import TableModel


def test_select_lowest_takes_the_ratio_of_each_row():
    region = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    scores = torch.arange(11.0).flip(0).expand(2, 11).clone()  # later positions are less probable
    scores[1, 4] = -5.0  # the truly lowest of row 1
    chosen = select_lowest(scores, region, 0.3)
    assert chosen[0].nonzero().flatten().tolist() == [8, 9, 10]  # round(0.3 * 10) = 3 lowest
    assert chosen[1].nonzero().flatten().tolist() == [4]  # round(0.3 * 4) = 1
    assert not (chosen & ~region).any()


def test_chunks_cover_the_hypothesis_in_order_without_overlap():
    region = torch.zeros(2, 12, dtype=torch.bool)
    region[0, 2:12] = True
    region[1, 2:5] = True
    masks = chunk_masks(region, 4)
    assert torch.equal(torch.stack(masks).sum(0).bool(), region) and int(torch.stack(masks).sum()) == int(region.sum())
    firsts = [int(m[0].nonzero()[0]) for m in masks]
    assert firsts == sorted(firsts)


def build(reference: str, table_boost: float = 8.0):
    task = DigitsTask(DigitsConfig(train_size=10, test_size=2, validation_size=2))
    tok = BuiltinTokenizer.build(["0123456789="])
    prompt = "12345="
    ref = tok.encode(reference)
    p = len(tok.encode(prompt))

    def fn(ids, attention_mask, position_ids):
        logits = torch.zeros(*ids.shape, len(tok))
        for j, t in enumerate(ref):  # the model knows the right answer at every answer position
            logits[:, p + j, t] = table_boost
        return logits

    from tasks.base import Layout

    return task, tok, [Layout(prompt=prompt, answer=reference)], TableModel(fn=fn)


def test_low_confidence_deliberation_repairs_the_wrong_tokens():
    task, tok, layouts, model = build("54321")
    special = SpecialIds(tok.mask_id, tok.eos_id)
    hyp = ["59381"]  # two wrong digits
    engine = Engine(model, tok)
    assert engine.special == special
    fixed, calls = deliberate(engine, task, layouts, hyp, DeliberationConfig("low_confidence", 0.4))
    assert fixed == ["54321"] and calls == 1 + 2  # one scoring forward, then one token per call
    for mode in ("random", "chunks"):
        config = DeliberationConfig(mode, 1.0, chunks=5)
        out, _ = deliberate(engine, task, layouts, hyp, config, torch.Generator().manual_seed(0))
        assert out == ["54321"]  # masking everything lets the model rewrite all of it


def test_reference_protocol_counts_and_chunks_as_the_release():
    region = torch.zeros(1, 12, dtype=torch.bool)
    region[0, 2:12] = True  # 10 hypothesis tokens
    scores = torch.arange(12.0).flip(0)[None]
    assert int(select_lowest(scores, region, 0.25).sum()) == 2  # round(2.5) = 2 (half to even)
    assert int(select_lowest(scores, region, 0.35).sum()) == 4  # round(3.5) = 4
    assert int(select_lowest(scores, region, 0.35, floor=True).sum()) == 3  # int(3.5): the release's count
    sizes = [int(m.sum()) for m in chunk_masks(region, 4, remainder_last=True)]
    assert sizes == [2, 2, 2, 4]  # 10 // 4 each, the remainder in the last chunk
    assert [int(m.sum()) for m in chunk_masks(region, 4)] == [3, 2, 3, 2]
    short = torch.zeros(1, 5, dtype=torch.bool)
    short[0, 2:5] = True  # fewer tokens than chunks: the release's chunks are empty but the last
    assert [int(m.sum()) for m in chunk_masks(short, 4, remainder_last=True)] == [0, 0, 0, 3]


def test_reference_low_confidence_scores_with_padding_at_the_hypothesis():
    task, tok, layouts, _ = build("54321")
    p = len(tok.encode("12345="))
    seen = []

    def fn(ids, attention_mask, position_ids):
        seen.append(ids.clone())
        return torch.zeros(*ids.shape, len(tok))

    engine = Engine(TableModel(fn=fn), tok)
    for protocol, hidden in (("ours", tok.mask_id), ("reference", tok.pad_id)):
        seen.clear()
        deliberate(engine, task, layouts, ["59381"], DeliberationConfig("low_confidence", 0.4, protocol=protocol))
        assert seen[0][0, p : p + 5].tolist() == [hidden] * 5  # the scoring forward


def test_free_length_deliberation_adds_and_drops_words():
    from dataclasses import replace

    task, tok, layouts, _ = build("54321")
    task.config = replace(task.config, answer_length=8)
    p = len(tok.encode("12345="))
    ref = tok.encode("54321")

    def fn(ids, attention_mask, position_ids):
        logits = torch.zeros(*ids.shape, len(tok))
        for j in range(ids.shape[1] - p):  # the answer, then EOS to the end of the canvas
            logits[:, p + j, ref[j] if j < len(ref) else tok.eos_id] = 8.0
        return logits

    engine = Engine(TableModel(fn=fn), tok)
    for hyp in ("5431", "5432199"):  # a dropped digit, two inserted ones
        fixed, _ = deliberate(engine, task, layouts, [hyp], DeliberationConfig("low_confidence", 0.5, free_length=True))
        assert fixed == ["54321"]
    kept, _ = deliberate(engine, task, layouts, ["5431"], DeliberationConfig("low_confidence", 0.5))
    assert len(kept[0]) == 4  # without it no word can be added (an EOS written over one can drop it)
    task.config = replace(task.config, answer_length=None)
    import pytest

    with pytest.raises(ValueError, match="answer_length"):
        deliberate(engine, task, layouts, ["5431"], DeliberationConfig("chunks", free_length=True))
