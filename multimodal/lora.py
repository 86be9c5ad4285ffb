"""Low-rank adapters (LoRA) on linear layers, used to fine-tune a frozen backbone's attention projections.

`add_lora(model, targets, rank, alpha)` replaces every `nn.Linear` whose name ends with one of the
targets (``q_proj``, ``k_proj``, ``v_proj`` for Whisper-LLaDA) by a `LoRALinear`: the frozen base
layer plus B A x scaled by alpha / rank, with A random and B zero so training starts from the base
model. `merge_lora` folds the update back into plain linear layers for inference or export.
`load_peft_lora` reads trained adapters saved by peft on the released LLaDA layout (Whisper-LLaDA's
checkpoint: ``...transformer.blocks.N.q_proj.lora_A.default.weight``), whose module names are ours.
`adapters_disabled` runs the base model alone, which post-training uses as its frozen reference when the
adapters started at zero (no second copy of the weights).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from encoders.weights import raise_key_problems


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(x)); the base layer is frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.enabled = True
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out.to(self.base.weight.device, self.base.weight.dtype)


def add_lora(model: nn.Module, targets: tuple[str, ...] | list[str], rank: int, alpha: float) -> list[str]:
    """Wrap the matching linear layers in place; returns their names. A target that names no linear
    layer of the model is an error naming it (a misspelt target would otherwise leave layers unadapted)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
    found = {n.split(".")[-1] for n in names}
    missing = [t for t in targets if t not in found]
    if missing:
        layers = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"LoRA targets {missing} name no linear layer of the model (its layers: {', '.join(layers)})")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    return names


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[int]:
    """Within the block every LoRALinear of `model` computes its base layer alone; yields how many."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    states = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield len(layers)
    finally:
        for m, state in zip(layers, states, strict=True):
            m.enabled = state


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by its merged linear layer; returns how many were merged."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merged())
    return len(found)


_PEFT_KEY = re.compile(r"(?:^|\.)transformer\.(blocks\.\d+\.\w+)\.lora_([AB])\.[^.]+\.weight$")


def load_peft_lora(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy peft LoRA weights (A: (r, in), B: (out, r)) into `model`'s LoRALinear layers, by module name.

    Every LoRA layer of the model must get both matrices and every LoRA key of `state` must find its
    layer; missing, unknown and mis-shaped ones are named together. Returns the layers loaded.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    found: dict[tuple[str, str], torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            match = _PEFT_KEY.search(key)
            if match is None:
                raise ValueError(f"{source}: LoRA key {key} is not on the LLaDA layout (transformer.blocks.N.<layer>)")
            found[match.group(1), match.group(2)] = value
    unknown = sorted({name for name, _ in found} - set(layers))
    missing = sorted(f"{n}.lora_{ab}" for n in layers for ab in "AB" if (n, ab) not in found)
    wrong = []
    for (name, ab), value in found.items():
        if name in layers:
            target = layers[name].lora_a if ab == "A" else layers[name].lora_b
            if target.shape != value.shape:
                wrong.append(f"{name}.lora_{ab} {tuple(value.shape)} (expected {tuple(target.shape)})")
    groups = (("layers without LoRA here", unknown), ("missing", missing), ("mis-shaped", wrong))
    raise_key_problems(source, groups, limit=10)
    with torch.no_grad():
        for (name, ab), value in found.items():
            (layers[name].lora_a if ab == "A" else layers[name].lora_b).copy_(value)
    return len(layers)
