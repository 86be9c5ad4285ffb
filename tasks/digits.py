"""Embedded toy task: reverse (or sort) a digit string given as the prompt.

It proves the loop end to end in minutes on a CPU: the model must read the whole prompt and write
an answer of the right length, then stop with EOS. Examples are generated deterministically from a
seed; validation and test strings never occur in the training split.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tasks.base import TASKS, Layout, Task, TaskConfig
from tasks.metrics import exact_match, token_accuracy


@dataclass
class DigitsConfig(TaskConfig):
    """Settings of the digit task.

    Attributes:
        operation: ``reverse`` the string or ``sort`` its digits.
        min_digits, max_digits: length range of the prompt string.
        train_size, validation_size, test_size: examples per split.
    """

    name: str = "digits"
    operation: Literal["reverse", "sort"] = "reverse"
    min_digits: int = 4
    max_digits: int = 12
    train_size: int = 50000
    validation_size: int = 256
    test_size: int = 512

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")


@TASKS.register("digits")
class DigitsTask(Task):
    Config = DigitsConfig

    def __init__(self, config: DigitsConfig):
        super().__init__(config)
        self._splits: dict[str, list[dict[str, Any]]] | None = None

    def _build(self) -> dict[str, list[dict[str, Any]]]:
        cfg = self.config
        rng = random.Random(cfg.seed)
        sizes = {"test": cfg.test_size, "validation": cfg.validation_size, "train": cfg.train_size}
        seen: set[str] = set()
        splits: dict[str, list[dict[str, Any]]] = {}
        for split, size in sizes.items():  # held-out splits first, so train excludes them
            items = []
            while len(items) < size:
                n = rng.randint(cfg.min_digits, cfg.max_digits)
                s = "".join(rng.choice("0123456789") for _ in range(n))
                if s in seen:  # held-out strings never repeat, nor appear in train
                    continue
                if split != "train":
                    seen.add(s)
                items.append({"id": f"{split}-{len(items)}", "digits": s})
            splits[split] = items
        return splits

    def examples(self, split: str) -> Sequence[dict[str, Any]]:
        self.check_split(split)
        if self._splits is None:
            self._splits = self._build()
        return self._splits[split]

    def layout(self, example: dict[str, Any]) -> Layout:
        s = example["digits"]
        answer = s[::-1] if self.config.operation == "reverse" else "".join(sorted(s))
        return Layout(prompt=s + "=", answer=answer, meta={"id": example["id"], "reference": answer})

    def metrics(self, predictions: Sequence[str], layouts: Sequence[Layout]) -> dict[str, float]:
        refs = [x.answer for x in layouts]
        return {"exact_match": exact_match(predictions, refs), "char_accuracy": token_accuracy(predictions, refs)}
