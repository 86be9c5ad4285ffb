"""Checkpoint folders: a second name (a run's `last`) links the weights instead of writing them again."""

from __future__ import annotations

import os

import torch
from torch import nn

from multimodal.checkpoint import WEIGHTS, link_checkpoint, read_weights, save_checkpoint


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _tokenizer(path):
    path.mkdir()
    (path / "vocab.txt").write_text("a\nb\n")


def test_last_is_hard_linked_to_the_step_folder_and_replaced_whole(tmp_path):
    first, second = nn.Linear(3, 2), nn.Linear(3, 2)
    step1 = save_checkpoint(tmp_path / "step_1", first, "name: a\n", {"tokenizer": _tokenizer})
    last = link_checkpoint(step1, tmp_path / "last")
    assert _files(last) == _files(step1) == ["config.yaml", "model.safetensors", "tokenizer/vocab.txt"]
    for name in _files(step1):
        assert os.stat(last / name).st_ino == os.stat(step1 / name).st_ino, name  # no second copy

    step2 = save_checkpoint(tmp_path / "step_2", second, "name: b\n", {"tokenizer": _tokenizer})
    link_checkpoint(step2, tmp_path / "last")
    assert (last / "config.yaml").read_text() == "name: b\n"
    torch.testing.assert_close(read_weights(last / WEIGHTS)["weight"], second.weight.detach())
    torch.testing.assert_close(read_weights(step1 / WEIGHTS)["weight"], first.weight.detach())  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_1", "step_2"]  # no temporary left


def test_link_checkpoint_copies_where_links_fail(tmp_path, monkeypatch):
    step = save_checkpoint(tmp_path / "step_1", nn.Linear(3, 2), "name: a\n")

    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    last = link_checkpoint(step, tmp_path / "last")
    assert os.stat(last / WEIGHTS).st_ino != os.stat(step / WEIGHTS).st_ino
    assert (last / WEIGHTS).read_bytes() == (step / WEIGHTS).read_bytes()


def test_init_from_says_what_it_loaded(tmp_path, caplog):
    import logging

    from multimodal.config import dump
    from multimodal.train.build import build_run
    from multimodal.train.config import load_experiment

    sets = ["task.train_size=20", "task.test_size=2", "task.validation_size=2"]
    run = build_run(load_experiment("digits_reverse", sets))
    folder = save_checkpoint(tmp_path / "start", run.model, dump(run.config), {"tokenizer.json": run.tokenizer.save})
    with caplog.at_level(logging.INFO, logger="multimodal.train.build"):
        again = build_run(load_experiment("digits_reverse", [*sets, f"init_from={folder}", "seed=1"]))
    assert f"initialised from {folder}: every tensor (0.86M parameters: backbone)" in caplog.text
    pairs = zip(run.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
