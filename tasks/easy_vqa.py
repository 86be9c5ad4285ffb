"""easy-VQA as a task: the published set (tasks/real/easy_vqa.py, from the pinned ``easy-vqa`` wheel) through
the VQA task's layouts and metrics (tasks/vqa.py): per-type accuracy (yes/no, shape, colour) with the
answer prior of the training split, and the text-only control (``task.text_only: true``).

A public CNN + LSTM model reports 87.6 % test accuracy on this set (the issue that asked for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.base import TASKS
from tasks.real.built import built_dataset
from tasks.real.easy_vqa import EasyVQABuild, write_easy_vqa_dataset
from tasks.vqa import VQAConfig, VQATask


@dataclass
class EasyVQAConfig(VQAConfig):
    """VQA settings (tasks/vqa.py) plus where the set is built and how much of train is held out.

    Attributes:
        data_dir: where the records and images are written, once per build setting.
        validation: share of the train images held out as the validation split (the set has none).
    """

    name: str = "easy_vqa"
    data: str = "assets"
    data_dir: str = "data/easy_vqa"
    validation: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.validation < 1:
            raise ValueError(f"validation must be a share in (0, 1), got {self.validation}")


@TASKS.register("easy_vqa")
class EasyVQATask(VQATask):
    Config = EasyVQAConfig

    def _source(self, split: str) -> Path:
        cfg = self.config
        if cfg.files.get(split) or cfg.data != "assets":
            return super()._source(split)
        build = EasyVQABuild(validation=cfg.validation, seed=cfg.seed)
        return built_dataset(cfg.data_dir, build, write_easy_vqa_dataset, "easy-VQA") / f"{split}.json"
