"""The decoding engine every caller shares: media encoded once, per-call settings, text, scoring, and
the task-side extension points (Task.evaluate and task commands) that need no change outside tasks."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.model import MultimodalDiffusionModel
from multimodal.sampling import SamplerConfig, SpecialIds, create_sampler, generate
from multimodal.sampling.engine import Engine
from multimodal.types import MediaItems, MultimodalBatch, PromptBatch

IMG = 7


@dataclass
class Tok:
    """The tokenizer fields the engine reads; decode joins ids."""

    mask_id: int = 127
    eos_id: int = 126
    pad_id: int = 0
    eot_id: int | None = 125

    def decode(self, ids):
        return " ".join(map(str, ids))


class CountingAdapter(nn.Module):
    """(B, N, 3) -> (B, N, 128) features; counts its calls and reports an extra per item."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 128)
        self.calls = 0

    def forward(self, inputs, mask=None):
        self.calls += 1
        out = self.proj(inputs)
        return out, torch.ones(out.shape[:2], dtype=torch.bool), {"norm": out.norm(dim=-1)}


@pytest.fixture
def model():
    torch.manual_seed(0)
    backbone = create_backbone(backbone_preset("llada_tiny", max_seq_len=64, init_std=0.2))
    return MultimodalDiffusionModel(backbone, {"image": CountingAdapter()}, {"image": IMG})


def image_batch() -> PromptBatch:
    prompts = [[5, IMG, IMG, 9], [6, IMG, IMG, 10, 11, 12]]  # mixed lengths, one image of 2 vectors each
    return PromptBatch(prompts, {"image": torch.randn(2, 1, 2, 3)}, {"image": torch.ones(2, 1, dtype=torch.bool)})


def test_generate_encodes_media_once_and_decodes_as_the_loop(model):
    cfg = SamplerConfig(steps=8, gen_length=8, block_length=4, temperature=0.5)
    engine = Engine(model, Tok(), cfg, seed=3)
    batch = image_batch()
    out = engine.generate(batch, generator=engine.generator())
    assert model.adapters["image"].calls == 1 and out.nfe == 8
    assert out.extras["image"]["rows"].tolist() == [0, 1]  # the tower's outputs come back with their rows
    model.adapters["image"].calls = 0
    reference = generate(  # raw media: the model encodes them again at every full forward
        model,
        batch.prompts,
        create_sampler(cfg),
        SpecialIds(127, 126, 125),
        pad_id=0,
        generator=torch.Generator().manual_seed(3),
        media=MediaItems(batch.modality_inputs, batch.modality_masks),
    )
    assert model.adapters["image"].calls == 8
    assert torch.equal(out.sequences, reference.sequences)


def test_a_call_can_replace_the_default_sampler(model):
    engine = Engine(model, Tok(), SamplerConfig(steps=8, gen_length=8, block_length=8))
    batch = image_batch()
    assert engine.generate(batch).nfe == 8
    short = engine.generate(batch, SamplerConfig(steps=2, gen_length=4, block_length=4))
    assert short.nfe == 2 and short.generated.shape == (2, 4)
    assert engine.sampler() is engine.sampler()  # the default is built once
    assert engine.sampler(steps=4).config.steps == 4 and engine.sampler_config.steps == 8


def test_text_stops_at_eos_or_eot_and_drops_masks(model):
    engine = Engine(model, Tok())
    assert engine.text([3, 127, 4, 125, 5]) == "3 4"
    assert engine.text([3, 126, 4]) == "3" and engine.text([3, 4]) == "3 4"


def test_logits_count_positions_from_each_rows_first_real_token():
    torch.manual_seed(0)
    backbone = create_backbone(backbone_preset("llada_tiny", max_seq_len=64, init_std=0.2))
    engine = Engine(backbone, Tok())
    row = torch.tensor([[5, 9, 127, 11]])
    alone = engine.logits(MultimodalBatch(input_ids=row, maskable=row == 127))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    batch = MultimodalBatch(input_ids=padded, maskable=padded == 127, attention_mask=mask)
    torch.testing.assert_close(engine.logits(batch)[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_infill_keeps_every_given_token(model):
    engine = Engine(model.backbone, Tok(), SamplerConfig(steps=3, gen_length=3, block_length=3))
    ids = torch.tensor([[5, 127, 9, 127, 127, 126]])
    out = engine.infill(MultimodalBatch(input_ids=ids, maskable=ids == 127))
    given = ids != 127
    assert torch.equal(out.sequences[given], ids[given]) and out.nfe == 3
    assert (out.commit_step[given] == -1).all() and (out.commit_step[~given] >= 0).any()


# ---- a task that lives outside the package: its own evaluation and command, no change to the CLI


def test_a_new_task_brings_its_evaluation_and_command(tmp_path, capsys, monkeypatch):
    from multimodal.cli import main
    from tasks.base import TASKS
    from tasks.commands import TASK_COMMANDS, CommandOutput, TaskCommand
    from tasks.digits import DigitsConfig, DigitsTask

    @dataclass
    class LengthConfig(DigitsConfig):
        name: str = "digits_length"

    class LengthTask(DigitsTask):
        """Digit reversal whose evaluation also scores the answer lengths."""

        Config = LengthConfig

        def evaluate(self, engine, split="test", limit=None):
            result = self.decode_and_score(engine, split, limit)
            lengths = [len(r["prediction"]) == len(r["reference"]) for r in result.records]
            result.metrics["length_match"] = sum(lengths) / max(len(lengths), 1)
            result.files["lengths.json"] = json.dumps(lengths)
            return result

    def count(args, context):
        texts = context.engine.texts(context.engine.generate([[5, 6, 7]] * args.n))
        return CommandOutput(lines=[f"{len(texts)} answers"], files={"count.txt": str(len(texts))})

    command = TaskCommand(
        "count_answers", "answer n times", ("digits_length",), lambda p: p.add_argument("--n", type=int), count
    )
    monkeypatch.setitem(TASKS._entries, "digits_length", LengthTask)
    monkeypatch.setitem(TASK_COMMANDS._entries, "count_answers", command)
    sets = ["task.name=digits_length", f"train.output_dir={tmp_path}", "train.max_steps=2", "train.batch_size=4"]
    sets += ["task.train_size=50", "task.test_size=4", "task.validation_size=4", "train.threads=1"]
    assert main(["train", "-c", "digits_reverse", *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "digits_reverse"
    assert '"length_match"' in capsys.readouterr().out
    assert len(json.loads((run / "eval" / "test_lengths.json").read_text())) == 4
    assert main(["count_answers", "--run", str(run), "--n", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "3 answers" and (run / "count.txt").read_text() == "3"
