"""AdamW with decay only on matrices and a learning rate per model part, and a linear warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    part_lr: dict[str, float] | None = None,
    part_of: Callable[[str], str] | None = None,
) -> list[dict]:
    """Trainable parameters grouped by part (each with its own learning rate) and by decay: matrices
    are decayed, vectors such as norm scales never are."""
    part_lr = part_lr or {}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = part_of(name) if part_of else "all"
            groups.setdefault((part, param.dim() >= 2), []).append(param)
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
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float,
    part_lr: dict[str, float] | None = None,
    part_of: Callable[[str], str] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups = param_groups(model, weight_decay, lr, part_lr, part_of)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen (check train.trainable)")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_lr_ratio)
    )
    return optimizer, scheduler
