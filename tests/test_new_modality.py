"""A new modality is an encoder and a task, nothing else: this test adds one (3-D point clouds) in this file
alone and runs it through the paths every modality takes: `mmdiff sample --media`, a server backend's chat
turn, and the task's own evaluation loop. No module of the project names the modality."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from encoders.base import ENCODERS, ModalityEncoder
from multimodal.cli import main
from multimodal.sources import RunBackend, Turn
from multimodal.train.build import build_run
from multimodal.train.config import load_experiment
from multimodal.train.run import save_run_checkpoint
from tasks.base import TASKS, Layout, Task, TaskConfig


class PointEncoder(ModalityEncoder):
    """A point cloud given as float32 x, y, z bytes -> one feature vector per point."""

    modality = "pointcloud"
    output_dim = 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, self.output_dim)

    def preprocess(self, raw: Any) -> torch.Tensor:
        data = raw if isinstance(raw, bytes) else open(raw, "rb").read()
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(-1, 3).copy())

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return inputs.shape[-2]

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(inputs)


@dataclass
class PointCountConfig(TaskConfig):
    name: str = "point_count"


class PointCountTask(Task):
    """Four points per cloud; the answer is how many lie at x > 0.5 (items of one size: this toy tower has no
    padding mask)."""

    Config = PointCountConfig

    def examples(self, split: str) -> Sequence[dict[str, Any]]:
        rng = np.random.default_rng({"train": 0, "validation": 1, "test": 2}[split])
        return [{"id": f"{split}-{i}", "points": rng.random((4, 3), dtype=np.float32)} for i in range(8)]

    def layout(self, example: dict[str, Any]) -> Layout:
        answer = str(int((example["points"][:, 0] > 0.5).sum()))
        media = {"pointcloud": [example["points"].tobytes()]}
        return Layout(prompt="<pointcloud> how many?", answer=answer, media=media, meta={"id": example["id"]})

    def layout_for_prompt(self, prompt: str, media=None) -> Layout:
        self.refuse_media(media, ("pointcloud",))
        return Layout(prompt=f"<pointcloud> {prompt}", answer="", media={"pointcloud": [media["pointcloud"]]})

    def metrics(self, predictions: Sequence[str], layouts: Sequence[Layout]) -> dict[str, float]:
        return {"exact": float(np.mean([p == lay.answer for p, lay in zip(predictions, layouts, strict=True)]))}


@pytest.fixture
def points_modality(monkeypatch):
    """The encoder and the task registered for this test only."""
    monkeypatch.setitem(ENCODERS._entries, "test_points", PointEncoder)
    monkeypatch.setitem(TASKS._entries, "point_count", PointCountTask)


def cloud(n: int) -> bytes:
    return np.arange(3 * n, dtype=np.float32).tobytes()


def test_a_new_modality_is_an_encoder_and_a_task(points_modality, tmp_path, capsys):
    (tmp_path / "points.yaml").write_text(
        f"""
name: points
backbone: {{preset: llada_tiny, vocab_size: 64, max_seq_len: 64}}
tokenizer: {{kind: char}}
task: {{name: point_count}}
modalities: {{pointcloud: {{encoder: test_points, projector: linear, placeholder: "<pointcloud>"}}}}
sampler: {{gen_length: 4, block_length: 4, steps: 4}}
train: {{output_dir: {tmp_path}, threads: 1}}
"""
    )
    run = build_run(load_experiment(str(tmp_path / "points.yaml")))
    save_run_checkpoint(run, 0)
    batch = RunBackend(run).chat([Turn("user", "how many?", media={"pointcloud": [cloud(4)]})])
    assert batch.prompts[0].count(run.tokenizer.token_id("<pointcloud>")) == 4  # one placeholder per point
    assert batch.modality_inputs["pointcloud"].shape == (1, 1, 4, 3)
    with pytest.raises(ValueError, match="takes pointclouds, not images"):
        run.task.layout_for_prompt("?", {"image": b"png"})
    (tmp_path / "c.bin").write_bytes(cloud(4))
    folder = str(run.folder)
    assert (
        main(["sample", "--run", folder, "--prompt", "how many?", "--media", f"pointcloud={tmp_path / 'c.bin'}"]) == 0
    )
    assert capsys.readouterr().out.startswith("how many? -> ")
    assert run.task.evaluate(run.engine(), "test").metrics["examples"] == 8
