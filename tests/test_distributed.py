"""Training at scale on the CPU: two-process DDP (ddp_spawn, gloo), the non-finite loss guard, FSDP's CUDA check.

The callbacks are module-level classes: ddp_spawn pickles them into the worker processes.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from multimodal.checkpoint import load_weights
from multimodal.cli import main
from multimodal.diffusion.objective import diffusion_loss
from multimodal.train.build import build_run
from multimodal.train.config import load_experiment
from multimodal.train.module import NonFiniteLoss, mask_seed
from multimodal.train.run import train


def tiny(tmp_path, *sets: str):
    """digits_reverse for a few steps of 4 sequences per process (llada_tiny, about 0.9M parameters)."""
    base = [
        f"train.output_dir={tmp_path}",
        "task.train_size=64",
        "task.test_size=4",
        "task.validation_size=4",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.threads=1",
        "train.eval_every=0",
    ]
    return load_experiment("digits_reverse", [*base, *sets])


def metrics(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "digits_reverse" / "metrics.jsonl").read_text().splitlines()]


class Record(L.Callback):
    """Writes, per rank, the first batch, its local loss, the gradients of the first update (after DDP's
    all-reduce, before clipping) and the final weights to `folder`/rank<R>.pt."""

    def __init__(self, folder) -> None:
        self.folder, self.data = folder, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            self.data["grads"] = {n: p.grad.clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.data["batch"], self.data["loss"] = batch, outputs["loss"].detach().clone()

    def on_train_end(self, trainer, pl_module) -> None:
        self.data["final"] = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        torch.save(self.data, self.folder / f"rank{trainer.global_rank}.pt")


class Poison(L.Callback):
    """Fills the final norm's scale with NaN on `rank` for the batch of step `step` (1-based, as in
    metrics.jsonl), so that batch's loss is NaN there; puts the scale back right after the loss (before
    the update, the other callbacks and the checkpoint) when the step goes on."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step, self.rank, self.saved = step, rank, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step and trainer.global_rank == self.rank:
            weight = pl_module.model.ln_f.weight
            self.saved = weight.detach().clone()
            with torch.no_grad():
                weight.fill_(float("nan"))

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        if self.saved is not None:
            with torch.no_grad():
                pl_module.model.ln_f.weight.copy_(self.saved)
            self.saved = None


def test_ddp_spawn_two_processes_match_one(tmp_path):
    """Two gloo processes, 4 sequences each, 3 steps; rank 1's loss is NaN at step 2 (train.on_nonfinite=skip).

    What is comparable: each rank masks its own half-batch with its own generator (seeded by seed, step
    and rank), so no single-process batch of 8 draws the same masks (antithetic t even depends on the
    batch size). DDP's update is the gradient of the mean of the two ranks' losses, so the test
    recomputes, in this process, each rank's loss on that rank's recorded batch with that rank's
    generator from the same initial weights: each must equal the rank's own loss, their mean the logged
    global loss, and the gradient of the mean the all-reduced gradient of the first update.
    Then: both ranks hold the same weights, the NaN on one rank made both skip step 2 (no divergence),
    only rank 0 wrote metrics.jsonl, and the weights came back to this (the calling) process.
    """
    config = tiny(tmp_path, "train.strategy=ddp_spawn", "train.devices=2", "train.accelerator=cpu")
    config.train.on_nonfinite = "skip"
    run = train(config, callbacks=[Record(tmp_path), Poison(step=2, rank=1)])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    batches = [r["batch"].input_ids for r in ranks]
    assert all(b.shape[0] == 4 for b in batches) and not torch.equal(batches[0], batches[1])  # per-rank slices
    for name, weight in ranks[0]["final"].items():
        torch.testing.assert_close(ranks[1]["final"][name], weight, rtol=0, atol=0)
        torch.testing.assert_close(dict(run.model.named_parameters())[name].detach(), weight, rtol=0, atol=0)

    fresh = build_run(config)  # the same initial weights (seeded)
    schedule, tok = config.diffusion.build_schedule(), fresh.tokenizer
    losses = []
    for rank, record in enumerate(ranks):
        generator = torch.Generator().manual_seed(mask_seed(config.seed, 0, rank))
        out = diffusion_loss(
            fresh.model, record["batch"], config.diffusion, schedule, tok.mask_id, generator, tok.eos_id, tok.pad_id
        )
        torch.testing.assert_close(out.loss.detach(), record["loss"])
        losses.append(out.loss)
    mean = (losses[0] + losses[1]) / 2
    mean.backward()
    for name, param in fresh.model.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name], param.grad, rtol=1e-4, atol=1e-7)

    lines = metrics(tmp_path)
    assert [x["step"] for x in lines] == [1, 2, 3]  # one writer
    assert lines[0]["loss"] == pytest.approx(float(mean.detach()), rel=1e-5)
    assert "nonfinite_skipped" not in lines[0] and lines[1]["nonfinite_skipped"] == lines[2]["nonfinite_skipped"] == 1


def test_nonfinite_stop_names_step_and_keeps_good_checkpoint(tmp_path):
    config = tiny(tmp_path, "train.max_steps=4", "train.checkpoint_every=1")
    with pytest.raises(NonFiniteLoss) as err:
        train(config, callbacks=[Poison(step=3)])
    checkpoints = tmp_path / "digits_reverse" / "checkpoints"
    assert str(err.value) == f"loss is nan at step 3; the last good checkpoint is {checkpoints / 'step_0000002'}"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["last", "state_0000001", "state_0000002", "step_0000001", "step_0000002"]
    assert [x["step"] for x in metrics(tmp_path)] == [1, 2]


def test_nonfinite_skip_drops_the_batch(tmp_path):
    config = tiny(tmp_path, "train.checkpoint_every=1", "train.on_nonfinite=skip")
    run = train(config, callbacks=[Poison(step=2)])
    lines = metrics(tmp_path)
    assert [x["step"] for x in lines] == [1, 2, 3] and [x.get("nonfinite_skipped") for x in lines] == [None, 1, 1]
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    checkpoints = tmp_path / "digits_reverse" / "checkpoints"
    one, two = (build_run(config).model for _ in range(2))
    load_weights(checkpoints / "step_0000001", one)
    load_weights(checkpoints / "step_0000002", two)
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        assert torch.equal(a, b)  # the skipped step changed nothing


def test_fsdp_on_cpu_is_a_one_line_error(tmp_path, capsys):
    args = ["train", "-c", "digits_reverse", "--set", f"train.output_dir={tmp_path}"]
    assert main([*args, "--set", "train.strategy=fsdp", "--set", "train.accelerator=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.strategy=fsdp needs CUDA" in err
    assert not (tmp_path / "digits_reverse").exists()


def test_weight_decay_follows_the_unsharded_shapes():
    """Under FSDP the optimiser sees flat shards with wrapper segments in their names; the matrices
    recorded before sharding still decide which parameters decay."""
    from torch import nn

    from multimodal.train.optim import matrix_names, param_groups

    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    matrices = matrix_names(model)
    assert matrices == {"0.weight"}
    wrapper = nn.Module()
    wrapper._fsdp_wrapped_module = model  # the names FSDP gives: _fsdp_wrapped_module.0.weight, ...
    for p in model.parameters():
        p.data = p.data.flatten()  # what a shard looks like: a vector

    def decayed(groups):
        return [tuple(p.shape) for g in groups if g["weight_decay"] > 0 for p in g["params"]]

    assert decayed(param_groups(wrapper, 0.1, 1e-3, matrices=matrices)) == [(12,)]
    assert decayed(param_groups(wrapper, 0.1, 1e-3)) == []  # shapes alone would decay nothing


def test_cli_reports_a_nonfinite_stop_in_one_line(tmp_path, monkeypatch, capsys):
    import multimodal.train.run as runs

    def stopped(config, callbacks=()):
        raise NonFiniteLoss(float("nan"), 3, tmp_path / "step_0000002")

    monkeypatch.setattr(runs, "train", stopped)
    assert main(["train", "-c", "digits_reverse", "--set", f"train.output_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"mmdiff train: stopped: loss is nan at step 3; the last good checkpoint is {tmp_path / 'step_0000002'}\n"
    )
