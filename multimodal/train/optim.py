"""AdamW with decay only on matrices and a learning rate per model part, and a linear warm-up + cosine schedule.

`OptimConfig` is the one set of optimiser settings: an experiment's ``train:`` section (TrainConfig) and a
tower pre-training run's (contrastive.py) both extend it, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay.

    Attributes:
        lr: peak learning rate (AdamW).
        min_lr_ratio: final learning rate as a fraction of the peak (cosine decay).
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW decay on matrices (never on norms or other vectors).
        betas: AdamW betas.
        grad_clip: gradient-norm clip (0 disables).
    """

    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0


def original_name(name: str) -> str:
    """A parameter's name with the segments FSDP and activation-checkpoint wrappers insert removed."""
    for segment in _WRAPPERS:
        name = name.replace(segment, "")
    return name


def matrix_names(model: nn.Module) -> set[str]:
    """Names of the parameters with 2+ dimensions. Take it before FSDP shards the model: its shards
    are flat vectors, so their own shapes no longer say which parameters are matrices."""
    return {name for name, param in model.named_parameters() if param.dim() >= 2}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    part_lr: dict[str, float] | None = None,
    part_of: Callable[[str], str] | None = None,
    matrices: set[str] | None = None,
) -> list[dict]:
    """Trainable parameters grouped by part (each with its own learning rate) and by decay: matrices
    are decayed, vectors such as norm scales never are. `matrices` (from `matrix_names` on the
    unwrapped model) decides what a matrix is; without it, each parameter's own shape does."""
    part_lr = part_lr or {}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            name = original_name(name)
            part = part_of(name) if part_of else "all"
            decay = name in matrices if matrices is not None else param.dim() >= 2
            groups.setdefault((part, decay), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": part_lr.get(part, lr), "part": part}
        for (part, decay), params in sorted(groups.items())
    ]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine down to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module,
    optim: OptimConfig,
    total_steps: int,
    part_lr: dict[str, float] | None = None,
    part_of: Callable[[str], str] | None = None,
    matrices: set[str] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `model`'s trainable parameters (param_groups) and its warm-up + cosine schedule."""
    lr, betas, warmup_steps, min_lr_ratio = optim.lr, optim.betas, optim.warmup_steps, optim.min_lr_ratio
    groups = param_groups(model, optim.weight_decay, lr, part_lr, part_of, matrices)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen (check train.trainable)")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_lr_ratio)
    )
    return optimizer, scheduler
