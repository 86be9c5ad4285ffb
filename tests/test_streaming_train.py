"""`mmdiff train` on streamed WebDataset shards: a crashed run resumes along the uninterrupted loss curve."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from multimodal.config import ConfigError
from multimodal.train.config import load_experiment
from multimodal.train.resume import latest_state, read_position
from multimodal.train.run import train
from tasks.shard_writer import write_protein_shards
from tests.test_resume import losses


class Crashed(RuntimeError):
    pass


class Crash(L.Callback):
    """Raises in the middle of step `step` (after the training state of an earlier step was written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            raise Crashed(f"crash at step {self.step}")


def protein_stream(tmp_path, protein_folder, out: str, *extra: str):
    if not (tmp_path / "shards").exists():
        written = write_protein_shards(protein_folder / "train.fasta", tmp_path / "shards", maxcount=4, progress=False)
        assert len(written.shards) == 3  # 12 training proteins, 4 per shard
    return load_experiment(
        "protein_dsm",
        [
            f"train.output_dir={tmp_path / out}",
            f"task.data={protein_folder}",
            f"task.files.train={tmp_path / 'shards'}/proteins-train-*.tar",
            "dsm.preset=esm2_tiny",
            "train.streaming=true",
            "train.shuffle_buffer=5",
            "train.batch_size=3",
            "train.max_steps=8",
            "train.warmup_steps=2",
            "train.log_every=1",
            "train.checkpoint_every=3",
            "train.threads=1",
            "train.eval_at_end=false",
            *extra,
        ],
    )


def test_streamed_run_resumes_exactly_after_a_crash(tmp_path, protein_folder):
    whole = train(protein_stream(tmp_path, protein_folder, "whole"))
    reference = losses(whole.folder)
    assert sorted(reference) == list(range(1, 9))  # 24 items: the stream crossed two epochs

    config = protein_stream(tmp_path, protein_folder, "crashed")
    with pytest.raises(Crashed):
        train(config, callbacks=[Crash(step=5)])
    folder = tmp_path / "crashed" / "protein_dsm"
    assert read_position(latest_state(folder))["global_step"] == 3
    with pytest.raises(ConfigError, match="read the stream with batch_size 3 on 1 processes"):
        train(protein_stream(tmp_path, protein_folder, "crashed", "train.resume=true", "train.batch_size=2"))
    resumed = train(protein_stream(tmp_path, protein_folder, "crashed", "train.resume=true"))
    curve = losses(resumed.folder)
    assert sorted(curve) == list(range(1, 9))
    torch.testing.assert_close(
        torch.tensor([curve[s] for s in range(1, 9)]), torch.tensor([reference[s] for s in range(1, 9)])
    )


def test_streaming_needs_shards_and_refuses_buckets(tmp_path):
    with pytest.raises(ConfigError, match="has no WebDataset shards"):
        train(load_experiment("digits_reverse", [f"train.output_dir={tmp_path}", "train.streaming=true"]))
    with pytest.raises(ConfigError, match="does not combine with train.streaming"):
        train(
            load_experiment(
                "digits_reverse", [f"train.output_dir={tmp_path}", "train.streaming=true", "train.bucket_batches=4"]
            )
        )
    with pytest.raises(ConfigError, match="train.cache_media needs the whole training set"):
        train(
            load_experiment(
                "digits_reverse", [f"train.output_dir={tmp_path}", "train.streaming=true", "train.cache_media=true"]
            )
        )


def test_mmdiff_shards_writes_what_training_streams(tmp_path, protein_folder):
    from multimodal.cli import main

    args = ["shards", "proteins", str(protein_folder / "train.fasta"), str(tmp_path / "shards"), "--maxcount", "5"]
    assert main([*args, "--no-progress"]) == 0
    shards = [f"proteins-train-{i:06d}.tar" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [*shards, "shards.index.json"]
    index = json.loads((tmp_path / "shards" / "shards.index.json").read_text())
    records = (protein_folder / "train.fasta").read_text().count(">")
    counts = [(e["url"], e["nsamples"]) for e in index["shardlist"]]
    assert counts == list(zip(shards, [5, 5, records - 10], strict=True))
    run = train(protein_stream(tmp_path, protein_folder, "run", "train.max_steps=2", "train.checkpoint_every=0"))
    assert sorted(losses(run.folder)) == [1, 2]
