"""train.compile: regional torch.compile of the backbone's blocks trains like the eager model."""

from __future__ import annotations

import torch

from multimodal.train.config import load_experiment
from multimodal.train.run import train
from tests.test_resume import losses, settings


def test_compiled_blocks_train_like_eager_ones(tmp_path):
    """train.compile: the same 3 steps with every LLaDA block compiled follow the eager loss curve."""
    eager = train(load_experiment("digits_reverse", settings(tmp_path / "eager", "train.max_steps=3")))
    compiled = train(
        load_experiment("digits_reverse", settings(tmp_path / "compiled", "train.max_steps=3", "train.compile=true"))
    )
    a, b = losses(eager.folder), losses(compiled.folder)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    torch.testing.assert_close(torch.tensor([b[s] for s in a]), torch.tensor(list(a.values())), rtol=1e-4, atol=1e-5)
