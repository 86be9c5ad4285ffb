"""Wiring the post-training stages into `mmdiff train` (run.py): the module, the frozen reference and
the data loader of a VRPO or diffu-GRPO experiment (posttrain_config.py says which).

Both start from the policy the experiment builds (`init_from`: the SFT checkpoint) and score against a
frozen reference: `vrpo.reference` / `grpo.reference` when given, else a frozen copy of the starting
policy, or, when the experiment trains LoRA adapters that start at zero, the policy with its adapters
switched off (the same function without a second copy of the weights).
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

import torch

from multimodal.lora import LoRALinear
from multimodal.sampling.base import merge_sampler
from multimodal.train.build import Run, load_run
from multimodal.train.grpo import GRPOModule, PromptSet, RepeatedBatches
from multimodal.train.module import DiffusionModule
from multimodal.train.preferences import read_pairs
from multimodal.train.rewards import build_reward
from multimodal.train.sampler import ResumableBatchSampler
from multimodal.train.vrpo import FrozenReference, VRPOModule, collate_pairs

log = logging.getLogger(__name__)


def is_posttraining(run: Run) -> bool:
    return run.config.vrpo is not None or run.config.grpo is not None


def build_reference(run: Run, folder: str | None) -> FrozenReference:
    """The frozen reference policy (module docstring)."""
    if folder:
        log.info("reference policy: %s", folder)
        return FrozenReference(load_run(folder).model)
    lora = run.config.train.lora
    if lora is not None and lora.weights is None and any(isinstance(m, LoRALinear) for m in run.model.modules()):
        log.info("reference policy: the starting model (the policy with its LoRA adapters off)")
        return FrozenReference(None)
    log.info("reference policy: a frozen copy of the starting model (%s)", run.config.init_from or "fresh weights")
    return FrozenReference(copy.deepcopy(run.model))


def posttrain_module(run: Run, **kwargs: Any) -> DiffusionModule:
    """The VRPO or GRPO LightningModule of the run; `kwargs` are DiffusionModule's (diffusion, train, ...)."""
    config = run.config
    if config.vrpo is not None:
        return VRPOModule(run.model, build_reference(run, config.vrpo.reference), config.vrpo, **kwargs)
    grpo = config.grpo
    rollout = merge_sampler(config.sampler, grpo.rollout, fixed_by="grpo.rollout")
    reward = build_reward(grpo.rewards, run.task)
    reference = build_reference(run, grpo.reference) if grpo.beta else FrozenReference(None)
    return GRPOModule(run.model, reference, grpo, rollout, run.tokenizer, reward, **kwargs)


def _prompt_set(layouts: list, task: Any, tokenizer: Any, modalities: Any) -> PromptSet:
    return PromptSet(list(layouts), task.prompt_batch(layouts, tokenizer, modalities))


def posttrain_loader(run: Run, step: int, samples: int, world_size: int) -> tuple[torch.utils.data.DataLoader, str]:
    """The training DataLoader entering the data at (global step, samples consumed), and what it reads.

    VRPO: batches of pairs from the endless resumable order (train.batch_size pairs). GRPO: batches of
    the split's prompts (train.batch_size prompts), each yielded grpo.inner_updates times in a row; its
    position is a function of the step alone.
    """
    config, cfg = run.config, run.config.train
    workers = {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0}
    common = {"task": run.task, "tokenizer": run.tokenizer, "modalities": run.modalities}
    if config.vrpo is not None:
        pairs, report = read_pairs(config.vrpo.data, run.task, run.tokenizer, run.modalities)
        log.info("%s", report.summary())
        sampler = ResumableBatchSampler(len(pairs), cfg.batch_size, config.seed, start=samples)
        loader = torch.utils.data.DataLoader(
            pairs, batch_sampler=sampler, collate_fn=functools.partial(collate_pairs, **common), **workers
        )
        return loader, f"{len(pairs)} preference pairs"
    grpo = config.grpo
    layouts = run.task.train_layouts() if grpo.split == "train" else run.task.eval_layouts(grpo.split)
    rollouts, inner = divmod(step, grpo.inner_updates)
    prompts = ResumableBatchSampler(
        len(layouts), cfg.batch_size, config.seed, start=rollouts * cfg.batch_size * world_size
    )
    loader = torch.utils.data.DataLoader(
        layouts,
        batch_sampler=RepeatedBatches(prompts, grpo.inner_updates, skip=inner),
        collate_fn=functools.partial(_prompt_set, **common),
        **workers,
    )
    return loader, f"{len(layouts)} {grpo.split} prompts x {grpo.group_size} completions"
