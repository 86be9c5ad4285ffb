"""Rewards for diffu-GRPO: plain Python callables (prompt, completion, layout) -> float.

`layout` is the task's example laid out (tasks/base.py `Layout`: its ``answer`` is the reference, its
``meta`` the question type and ids). Registered rewards are named in ``grpo.rewards`` with a weight; the
weighted sum is a completion's reward. ``task.<metric>`` uses any metric the task itself reports on one
prediction (``task.accuracy`` for VQA with its answer normalisation, ``task.wer`` with a negative weight
for speech), so a task's reward is the number it is evaluated on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from multimodal.registry import new_registry
from tasks import Task
from tasks.base import Layout
from tasks.metrics import exact_match, token_accuracy

Reward = Callable[[str, str, Layout], float]

REWARDS = new_registry("reward", "reward")


@REWARDS.register("exact_match")
def exact_match_reward(prompt: str, completion: str, layout: Layout) -> float:
    """1 when the completion equals the reference answer (surrounding whitespace ignored), else 0."""
    return exact_match([completion], [layout.answer])


@REWARDS.register("char_accuracy")
def char_accuracy_reward(prompt: str, completion: str, layout: Layout) -> float:
    """Share of the reference's characters reproduced at their position (a denser signal)."""
    return token_accuracy([completion], [layout.answer])


def task_metric_reward(task: Task, metric: str) -> Reward:
    """The task's own `metric` of one prediction, as a reward."""

    def reward(prompt: str, completion: str, layout: Layout) -> float:
        value = task.metrics([completion], [layout]).get(metric)
        if not isinstance(value, (int, float)):
            raise ValueError(f"task '{task.config.name}' reports no numeric metric '{metric}' (reward task.{metric})")
        return float(value)

    return reward


def build_reward(weights: Mapping[str, float], task: Task) -> Callable[[str, str, Layout], float]:
    """The weighted sum of the named rewards; an unknown name is a KeyError naming the known ones."""
    parts: list[tuple[Reward, float]] = []
    for name, weight in weights.items():
        fn = task_metric_reward(task, name.removeprefix("task.")) if name.startswith("task.") else REWARDS.get(name)
        parts.append((fn, float(weight)))

    def total(prompt: str, completion: str, layout: Layout) -> float:
        return sum(w * fn(prompt, completion, layout) for fn, w in parts)

    return total
