"""The VQA task: LLaVA JSON and shard readers with broken records, layouts, collation, CLI on one image."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from encoders import create_encoder
from multimodal.tokenizer import BuiltinTokenizer
from multimodal.types import ModalityIO
from tasks.records import BadRecord
from tasks.vqa import VQAConfig, VQATask, caption
from tasks.vqa_data import read_llava_json, read_shards
from tests.conftest import write_tar


def png(colour=(255, 0, 0), size=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def conv(question="<image>\nWhat colour?", answer="red", extra=()):
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    for q, a in extra:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


@pytest.fixture
def llava(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png())
    (tmp_path / "img" / "b.png").write_bytes(png((0, 0, 255)))
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    samples = [
        {"id": "good", "image": "img/a.png", "conversations": conv(extra=[("Is it round?", "no")])},
        {"id": "two", "image": ["img/a.png", "img/b.png"], "conversations": conv("<image> and <image>: same?", "no")},
        {"id": "missing", "image": "img/none.png", "conversations": conv()},
        {"id": "corrupt", "image": "img/bad.png", "conversations": conv()},
        {"id": "empty", "image": "img/a.png", "conversations": conv(answer=" ")},
        {"id": "noplace", "image": "img/a.png", "conversations": conv("What colour?")},
    ]
    (tmp_path / "train.json").write_text(json.dumps(samples))
    return tmp_path


def test_llava_json_reader_skips_and_counts_broken_records(llava):
    records, stats = read_llava_json(llava / "train.json")
    assert [r["id"] for r in records] == ["good", "two"]
    assert stats.kept == 2 and dict(stats.skipped) == {
        "missing image": 1,
        "corrupt image": 1,
        "empty answer": 1,
        "no placeholder": 1,
    }
    with pytest.raises(BadRecord, match="record missing: missing image"):
        read_llava_json(llava / "train.json", policy="fail")


def test_shard_reader_skips_and_counts_broken_samples(tmp_path):
    path = tmp_path / "train-00000.tar"
    write_tar(
        path,
        [
            ("k1.png", png()),
            ("k1.json", json.dumps({"id": "k1", "image": "k1.png", "conversations": conv()}).encode()),
            ("k2.png", b"garbage"),
            ("k2.json", json.dumps({"id": "k2", "image": "k2.png", "conversations": conv()}).encode()),
            ("k3.png", png()),
            ("k4.png", png()),
            ("k4.json", b"{not json"),
        ],
    )
    records, stats = read_shards([path])
    assert [r["id"] for r in records] == ["k1"]
    assert dict(stats.skipped) == {"corrupt image": 1, "no JSON metadata": 2}
    with pytest.raises(FileNotFoundError, match="shard files not found"):
        read_shards([tmp_path / "nope.tar"])


def test_layout_modes_and_multi_image_collation(llava):
    task = VQATask(VQAConfig(files={"train": str(llava / "train.json"), "test": str(llava / "train.json")}))
    each = task.train_layouts()
    assert [lay.prompt for lay in each[:2]] == ["<image>\nWhat colour?", "<image>\nIs it round?"]
    assert len(each[1].media["image"]) == 1 and each[2].media["image"] and len(each[2].media["image"]) == 2
    task.config.history = True
    assert task.train_layouts()[1].history == (("<image>\nWhat colour?", "red"),)
    task.config.turns = "conversation"
    convs = task.train_layouts()
    assert convs[0].prompt == "Is it round?" and convs[0].answer == "no" and len(convs[0].history) == 1
    task.config.text_only = True
    assert "<image>" not in task.train_layouts()[0].history[0][0] and not task.train_layouts()[0].media["image"]

    task.config.text_only, task.config.turns = False, "each"
    tok = BuiltinTokenizer.build(task.texts(), "word", specials=["<image>"])
    tower = create_encoder("conv_tiny")
    io_ = {"image": ModalityIO("image", tok.token_id("<image>"), tower.num_tokens, tower.preprocess)}
    task.config.history = False
    layouts = task.train_layouts()
    batch = task.collate([layouts[0], layouts[2]], tok, io_)
    assert batch.modality_inputs["image"].shape == (2, 2, 3, 32, 32)
    assert batch.modality_masks["image"].tolist() == [[True, False], [True, True]]
    placeholder = batch.input_ids == tok.token_id("<image>")
    n = tower.num_tokens()  # 8 x 8 grid
    assert n == 64 and placeholder.sum(1).tolist() == [n, 2 * n]
    assert not (placeholder & batch.maskable).any()


def test_history_answers_are_maskable_and_placeholders_shift_them(llava):
    task = VQATask(VQAConfig(files={"train": str(llava / "train.json")}, turns="conversation", answer_length=3))
    tok = BuiltinTokenizer.build(task.texts(), "word", specials=["<image>"])
    io_ = {"image": ModalityIO("image", tok.token_id("<image>"), lambda x: 4, lambda x: torch.zeros(3, 8, 8))}
    batch = task.collate(task.train_layouts()[:1], tok, io_)
    row = batch.input_ids[0][batch.maskable[0]].tolist()
    assert row[:2] == [tok.ids["red"], tok.eos_id] and row[2] == tok.ids["no"]  # history answer, then the final


def test_caption_mode_and_embedded_metrics(tmp_path):
    cfg = VQAConfig(
        data_dir=str(tmp_path),
        mode="caption",
        shapes={"train_scenes": 30, "validation_scenes": 5, "test_scenes": 5, "shard_size": 10},
    )
    task = VQATask(cfg)
    lay = task.train_layouts()[0]
    assert lay.prompt == "<image>\nDescribe the image." and lay.answer == caption(task.examples("train")[0]["scene"])
    task.config.mode = "qa"
    layouts = task.eval_layouts("test")
    metrics = task.metrics([x.answer for x in layouts], layouts)
    assert metrics["accuracy"] == 1.0 and 0.0 < metrics["answer_prior"] < 1.0
    assert {"accuracy/colour", "prior/count", "n/position"} <= set(metrics)


def test_cli_answers_a_question_about_an_image_file(tmp_path, capsys):
    from multimodal.cli import main

    small = [
        "--set",
        f"train.output_dir={tmp_path}",
        "--set",
        f"task.data_dir={tmp_path / 'data'}",
        "--set",
        "task.shapes={train_scenes: 20, validation_scenes: 4, test_scenes: 4, shard_size: 10}",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.threads=1",
        "--set",
        "train.log_every=1",
        "--set",
        "modalities.image.encoder_args={image_size: 32, widths: [16, 16]}",
    ]
    assert main(["train", "-c", "shapes_vqa", *small]) == 0
    image = tmp_path / "red.png"
    image.write_bytes(png(size=40))
    assert (
        main(
            [
                "sample",
                "--run",
                str(tmp_path / "shapes_vqa"),
                "--image",
                str(image),
                "--prompt",
                "What colour is the circle?",
                "--show-steps",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "What colour is the circle? -> " in out and "denoising order" in out
    assert main(["sample", "--run", str(tmp_path / "shapes_vqa"), "--prompt", "hi"]) == 2
    capsys.readouterr()
    broken = tmp_path / "broken.png"
    broken.write_bytes(png()[:40])
    assert main(["sample", "--run", str(tmp_path / "shapes_vqa"), "--image", str(broken), "--prompt", "hi"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"record {broken}: corrupt image" in errors[0]


def test_conv_tower_depth_adds_residual_stride_one_convolutions():
    import torch

    shallow, deep = create_encoder("conv_small"), create_encoder("conv_small", depth=2)
    convs = [[m for m in t.modules() if isinstance(m, torch.nn.Conv2d)] for t in (shallow, deep)]
    assert len(convs[0]) == 4 and len(convs[1]) == 7  # stem + 3 strided, then one stride-1 conv per stage
    assert sorted({c.stride for c in convs[1]}) == [(1, 1), (2, 2)]
    images = torch.randn(2, 3, 64, 64)
    assert shallow(images).shape == deep(images).shape == (2, 16, 128)
    with pytest.raises(ValueError, match="depth"):
        create_encoder("conv_small", depth=0)
