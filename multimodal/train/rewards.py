"""Rewards for diffu-GRPO: plain Python callables (prompt, completion, layout) -> float.

`layout` is the task's example laid out (tasks/base.py `Layout`: its ``answer`` is the reference, its
``meta`` the question type and ids). Registered rewards are named in ``grpo.rewards`` with a weight; the
weighted sum is a completion's reward: ``exact_match``, ``char_accuracy``, ``vqa_accuracy`` (the VQA
answer normalisation of the task's metric) and ``wer`` (one utterance's word error rate after the ASR
metric's normaliser; give it a negative weight). ``task.<metric>`` calls the task's whole `metrics` on
one prediction: any metric a task reports becomes a reward, but tasks whose metrics also compute
aggregates (the VQA answer prior reads the training split) make it slow, hence the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from multimodal.registry import new_registry
from tasks import Task
from tasks.asr_metrics import wer_report
from tasks.base import Layout
from tasks.metrics import exact_match, token_accuracy
from tasks.vqa_metrics import vqa_soft_accuracy

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


@REWARDS.register("vqa_accuracy")
def vqa_accuracy_reward(prompt: str, completion: str, layout: Layout) -> float:
    """The VQA accuracy of one answer (normalised answers compared, as the VQA tasks score)."""
    return vqa_soft_accuracy(completion, layout.answer)


@REWARDS.register("wer")
def wer_reward(prompt: str, completion: str, layout: Layout) -> float:
    """One utterance's word error rate against the reference transcript (lower is better: weight it -1)."""
    return float(wer_report([completion], [layout.answer])["wer"])


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
