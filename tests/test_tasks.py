"""The embedded digit task and the SFT collation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from multimodal.tokenizer import BuiltinTokenizer
from tasks import create_task
from tasks.base import sft_collate
from tasks.digits import DigitsConfig
from tasks.metrics import exact_match, token_accuracy


def test_splits_are_deterministic_and_disjoint():
    task = create_task(DigitsConfig(train_size=3000, validation_size=200, test_size=200, min_digits=3, max_digits=4))
    again = create_task(DigitsConfig(train_size=3000, validation_size=200, test_size=200, min_digits=3, max_digits=4))
    train = {e["digits"] for e in task.examples("train")}
    test = {e["digits"] for e in task.examples("test")}
    val = {e["digits"] for e in task.examples("validation")}
    assert not (train & test) and not (train & val) and not (val & test)
    assert [e["digits"] for e in again.examples("test")] == [e["digits"] for e in task.examples("test")]
    with pytest.raises(KeyError, match="unknown split"):
        task.examples("dev")


def test_layout_and_metrics():
    task = create_task(DigitsConfig(operation="sort"))
    lay = task.layout({"id": "x", "digits": "3121"})
    assert (lay.prompt, lay.answer) == ("3121=", "1123")
    assert task.metrics(["1123"], [lay]) == {"exact_match": 1.0, "char_accuracy": 1.0}
    assert exact_match(["12 ", "3"], ["12", "4"]) == 0.5
    assert token_accuracy(["123"], ["1234"]) == 0.75


def test_llada_sft_collate_pads_answers_with_maskable_eos():
    batch = sft_collate([[5, 6, 7], [5]], [[8, 9], [8, 8, 8, 8]], eos_id=2)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 2], [5, 8, 8, 8, 8, 2]]
    assert batch.maskable.tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert batch.attention_mask is None


def test_fixed_canvas_collate_left_pads_prompts():
    batch = sft_collate([[5, 6, 7], [5]], [[8, 9], [8]], eos_id=2, answer_length=3, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 2], [0, 0, 5, 8, 2, 2]]
    assert batch.maskable.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert batch.attention_mask.tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1]]
    assert batch.position_ids[1].tolist() == [0, 0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="answer of example b has 4 tokens, more than answer_length 3"):
        sft_collate([[5]], [[1, 2, 3, 4]], eos_id=2, answer_length=3, meta=[{"id": "b"}])


def test_task_collate_uses_the_tokenizer():
    task = create_task(DigitsConfig(train_size=10, test_size=4, validation_size=4, answer_length=14))
    tok = BuiltinTokenizer.build(task.texts())
    lays = [task.layout(e) for e in task.examples("train")[:3]]
    batch = task.collate(lays, tok)
    assert batch.input_ids.shape[1] == max(len(x.prompt) for x in lays) + 14
    row = batch.input_ids[0][batch.maskable[0]].tolist()
    assert tok.decode(row) == lays[0].answer and row[len(lays[0].answer) :] == [tok.eos_id] * (14 - len(lays[0].answer))
    assert torch.equal(batch.maskable.sum(1), torch.full((3,), 14))


SMALL = {
    "digits": {"train_size": 20, "test_size": 4, "validation_size": 4},
    "vqa": {"shapes": {"train_scenes": 10, "validation_scenes": 2, "test_scenes": 2}},
    "asr": {
        "spoken": {
            "train_size": 6,
            "validation_size": 2,
            "test_size": 3,
            "voices": ["en-us", "en-gb-x-rp"],
            "held_out_voices": ["en-us+f2"],
        }
    },
}


@pytest.mark.parametrize("name", __import__("tasks").TASKS.names())
def test_every_registered_task_lays_out_and_collates(name, tmp_path, protein_folder):
    from tasks import task_config_class

    cfg = task_config_class(name)(name=name)
    for key, value in SMALL.get(name, {}).items():
        setattr(cfg, key, value)
    if hasattr(cfg, "data_dir"):
        cfg.data_dir = str(tmp_path)
    if name in ("protein", "binder"):  # the embedded proteome takes a minute to build; its own tests cover it
        cfg.data = str(protein_folder)
    task = create_task(cfg)
    tok = BuiltinTokenizer.build(task.texts(), specials=["<image>"])
    lays = [lay for lay in task.eval_layouts("test") if not any(lay.media.values())]  # text-only rows
    lays = lays or [
        replace(lay, media={}, prompt=lay.prompt.replace("<image>", "")) for lay in task.eval_layouts("test")
    ]
    batch = task.collate(lays, tok)
    assert batch.maskable.any(1).all() and len(batch.meta) == len(lays)
    metrics = task.metrics([x.answer for x in lays], lays)
    key = next(iter(metrics))  # the headline metric, perfect for perfect predictions
    perfect = 0.0 if key.startswith(("wer", "js_")) else 1.0  # error rates and divergences are 0 when perfect
    assert metrics[key] == perfect
