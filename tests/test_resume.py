"""Exact resume: a run killed with SIGKILL continues from its last training state along the same loss
curve as an uninterrupted run; the training stream's order, splitting and position."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from multimodal.checkpoint import read_weights
from multimodal.train.config import load_experiment
from multimodal.train.resume import STATE_FILE, latest_state, read_position
from multimodal.train.run import train
from multimodal.train.sampler import ResumableBatchSampler

ROOT = Path(__file__).resolve().parents[1]


def settings(out: Path, *extra: str) -> list[str]:
    """digits_reverse, llada_tiny, 12 steps of 4 sequences, a training state every 3 steps."""
    return [
        f"train.output_dir={out}",
        "task.train_size=40",  # 10 batches an epoch: the run crosses an epoch boundary
        "task.test_size=4",
        "task.validation_size=4",
        "train.batch_size=4",
        "train.max_steps=12",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.threads=1",
        "train.eval_every=0",
        "train.eval_at_end=false",
        "train.checkpoint_every=3",
        *extra,
    ]


def losses(run_folder: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_sigkill_then_resume_follows_the_uninterrupted_curve(tmp_path):
    whole = train(load_experiment("digits_reverse", settings(tmp_path / "whole")))
    reference = losses(whole.folder)

    killed = tmp_path / "killed"
    argv = ["train", "-c", "digits_reverse"] + [a for s in settings(killed) for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "multimodal.cli", *argv], cwd=ROOT, env=env)
    folder = killed / "digits_reverse"
    deadline = time.monotonic() + 120
    while latest_state(folder) is None or read_position(latest_state(folder))["global_step"] < 6:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no training state at step 6 within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = latest_state(folder)
    position = read_position(state)
    step = position["global_step"]
    assert step < 12 and position["samples"] == step * 4 and (position["batch_size"], position["world_size"]) == (4, 1)

    resumed = train(load_experiment("digits_reverse", settings(killed, "train.resume=true")))
    curve = losses(resumed.folder)
    assert sorted(curve) == list(range(1, 13)), "metrics.jsonl must hold each step once"
    torch.testing.assert_close(
        torch.tensor([curve[s] for s in range(1, 13)]),
        torch.tensor([reference[s] for s in range(1, 13)]),
        rtol=1e-6,
        atol=1e-7,
    )
    for name, tensor in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


class CtrlC(L.Callback):
    """Sends this process a SIGINT after step `at`, as Ctrl-C in the terminal does."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_at_a_step_boundary_with_a_state_to_resume_from(tmp_path, capsys, monkeypatch):
    reference = losses(train(load_experiment("digits_reverse", settings(tmp_path / "whole"))).folder)
    before = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN under a shell's background job
    stopped = train(load_experiment("digits_reverse", settings(tmp_path / "stopped")), callbacks=[CtrlC(4)])
    assert stopped.stopped_at == 5  # the step that was running when the signal came is finished first
    assert read_position(latest_state(stopped.folder))["global_step"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    resumed = train(load_experiment("digits_reverse", settings(tmp_path / "stopped", "train.resume=true")))
    assert resumed.stopped_at is None
    curve = losses(resumed.folder)
    torch.testing.assert_close(
        torch.tensor([curve[s] for s in range(1, 13)]), torch.tensor([reference[s] for s in range(1, 13)])
    )

    from multimodal import cli

    monkeypatch.setattr("multimodal.train.run.train", lambda config: stopped)
    argv = ["train", "-c", "digits_reverse"] + [a for s in settings(tmp_path / "x") for a in ("--set", s)]
    assert cli.main(argv) == 130
    out = capsys.readouterr().out
    assert "interrupted at step 5 of 12" in out and "--set train.resume=true" in out


def test_training_state_holds_optimizer_scheduler_position_and_rng(tmp_path):
    run = train(load_experiment("digits_reverse", settings(tmp_path, "train.max_steps=3")))
    state = latest_state(run.folder)
    assert state is not None and state.name == "state_0000003"
    checkpoint = torch.load(state / STATE_FILE, weights_only=True)  # plain tensors and numbers only
    assert checkpoint["global_step"] == 3
    assert checkpoint["data_position"] == {"samples": 12, "step": 3, "batch_size": 4, "world_size": 1}
    assert read_position(state) == {"global_step": 3, **checkpoint["data_position"]}
    adam = checkpoint["optimizer_states"][0]["state"]
    assert adam and all(int(s["step"]) == 3 for s in adam.values())
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 3
    assert set(checkpoint["rng"]) == {"torch", "cuda", "python", "numpy"}
    weights = read_weights(state / "model.safetensors")
    for name, tensor in run.model.state_dict().items():
        torch.testing.assert_close(weights[f"model.{name}"], tensor)


def test_a_corrupt_state_falls_back_to_the_older_one(tmp_path, caplog):
    run = train(load_experiment("digits_reverse", settings(tmp_path, "train.max_steps=6")))
    newest = latest_state(run.folder)
    assert newest.name == "state_0000006"
    data = (newest / STATE_FILE).read_bytes()
    (newest / STATE_FILE).write_bytes(data[: len(data) // 2])  # cut short
    assert latest_state(run.folder, check=True).name == "state_0000003"
    assert "state_0000006 is unreadable" in caplog.text
    resumed = train(load_experiment("digits_reverse", settings(tmp_path, "train.max_steps=6", "train.resume=true")))
    assert read_position(latest_state(resumed.folder))["global_step"] == 6
    assert sorted(losses(resumed.folder)) == list(range(1, 7))  # steps 4-6 trained again, each logged once
    for state in (resumed.folder / "checkpoints").glob("state_*"):
        (state / "position.json").write_text("{")
    with pytest.raises(ValueError, match="no readable training state .* are corrupt"):
        latest_state(resumed.folder, check=True)


def test_resume_ignores_unfinished_state_folders(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / ".state_0000009.tmp-abc").mkdir(parents=True)  # a write cut short
    (folder / "state_0000012").mkdir()  # renamed only when complete: a bare folder is not a state
    assert latest_state(tmp_path) is None
    run = train(load_experiment("digits_reverse", settings(tmp_path / "run", "train.max_steps=3", "train.resume=true")))
    assert latest_state(run.folder).name == "state_0000003"


def stream(sampler: ResumableBatchSampler, batches: int) -> list[list[int]]:
    it = iter(sampler)
    return [next(it) for _ in range(batches)]


def test_stream_epochs_are_permutations_and_ranks_split_each_global_batch():
    size, batch = 10, 3
    ranks = [stream(ResumableBatchSampler(size, batch, seed=1, rank=r, world_size=2), 10) for r in range(2)]
    flat = [i for step in range(10) for r in range(2) for i in ranks[r][step]]  # the global stream
    for epoch in range(6):
        assert sorted(flat[epoch * size : (epoch + 1) * size]) == list(range(size))
    assert flat[:size] != flat[size : 2 * size], "each epoch draws its own order"


@pytest.mark.parametrize("start", [0, 7, 13, 30])
def test_stream_resumes_at_any_sample_position(start):
    whole = [i for b in stream(ResumableBatchSampler(11, 1, seed=5), 60) for i in b]
    later = [i for b in stream(ResumableBatchSampler(11, 1, seed=5, start=start), 20) for i in b]
    assert later == whole[start : start + 20]


def test_length_buckets_reduce_spread_and_keep_permutations():
    lengths = [int(x) for x in torch.randint(1, 200, (64,), generator=torch.Generator().manual_seed(0))]
    plain = stream(ResumableBatchSampler(64, 8, seed=0), 8)
    bucketed = stream(ResumableBatchSampler(64, 8, seed=0, lengths=lengths, bucket_batches=4), 8)
    assert sorted(i for b in bucketed for i in b) == list(range(64))

    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    assert spread(bucketed) < spread(plain) / 2
    with pytest.raises(ValueError, match="64 lengths"):
        ResumableBatchSampler(64, 8, seed=0, bucket_batches=4)
