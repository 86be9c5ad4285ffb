"""The one generation loop: `generate` (prompt + masked answer canvas) and `infill` (given masks).

LLaDA's reference loop (PAPERS.md section 1): the decoded region is split into blocks decoded left
to right; the steps are split evenly across blocks; each step runs one forward over the whole canvas,
asks the sampler which masked positions of the current block to commit, and commits them. Beyond the
reference, this loop handles:

* batches of prompts with different lengths: prompts are left-padded, padding keys are hidden from
  attention and rotary positions skip the padding, so each row decodes exactly as it would alone
  (the reference counts positions from the first pad, which changes the result);
* classifier-free guidance (the unconditional branch masks the prompt, both branches in one forward);
* EOS early stop (everything after a committed EOS becomes EOS, exhausted blocks are skipped);
* the output head applied only to the current block's positions;
* a per-step callback and the step at which each token was committed (to draw the denoising order).

The model is any callable ``model(input_ids, attention_mask=, position_ids=, return_logits=False,
**model_kwargs)`` returning hidden states, with a ``head`` method (the backbone and the multimodal
model both are).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from multimodal.sampling.base import Sampler, SamplerError, SpecialIds, StepInfo
from multimodal.types import SampleOutput


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (B, P) ids and a (B, P) attention mask, padding on the left."""
    if not prompts:
        raise SamplerError("no prompts given")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _context_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_seq_len", None)


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _blocks(start: int, end: int, block_length: int) -> list[tuple[int, int]]:
    return [(s, min(s + block_length, end)) for s in range(start, end, block_length)]


@torch.no_grad()
def _denoise(
    model: Any,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    region: tuple[int, int],
    blocks: list[tuple[int, int]],
    steps_per_block: int,
    sampler: Sampler,
    special: SpecialIds,
    conditioned: torch.Tensor,
    generator: torch.Generator | None,
    callback: Callable[[StepInfo], None] | None,
    model_kwargs: dict[str, Any],
) -> SampleOutput:
    """Decode the masked positions of x[:, region] block by block (shared by generate and infill)."""
    cfg = sampler.config
    mask_id = special.mask_id
    position_ids = None
    if attention_mask is not None and not bool(attention_mask.all()):
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, L), skips left padding
    r0, r1 = region
    commit_step = torch.where(x[:, r0:r1] == mask_id, -2, -1).to(x.device)  # -1: given, -2: not yet committed
    nfe = 0

    def block_logits(start: int, end: int) -> torch.Tensor:
        inp, am, pos = x, attention_mask, position_ids
        if cfg.cfg_scale > 0:
            uncond = torch.where(conditioned, torch.full_like(x, mask_id), x)
            inp = torch.cat([x, uncond])
            am = None if am is None else torch.cat([am, am])
            pos = None if pos is None else torch.cat([pos, pos])
        out = model(inp, attention_mask=am, position_ids=pos, return_logits=False, **model_kwargs)
        logits = model.head(out.hidden_states[:, start:end]).float()  # (B or 2B, Lb, V)
        if cfg.cfg_scale > 0:
            cond, uncond_logits = logits.chunk(2)
            logits = uncond_logits + (cfg.cfg_scale + 1.0) * (cond - uncond_logits)
        return logits

    for b, (s, e) in enumerate(blocks):
        masked = x[:, s:e] == mask_id
        if not bool(masked.any()):
            continue
        quota = sampler.quota(masked.sum(-1), steps_per_block)  # (B, steps)
        for i in range(steps_per_block):
            masked = x[:, s:e] == mask_id
            if not bool(masked.any()):
                break
            logits = block_logits(s, e)
            nfe += 1
            x0, commit = sampler.step(logits, masked, quota[:, i], special, generator)
            x[:, s:e] = torch.where(commit, x0, x[:, s:e])
            committed = torch.zeros_like(x, dtype=torch.bool)
            committed[:, s:e] = commit
            if cfg.stop_at_eos and special.eos_id is not None:
                committed |= _fill_after_eos(x, r0, r1, special.eos_id, mask_id)
            commit_step[committed[:, r0:r1]] = nfe - 1
            if callback is not None:
                callback(StepInfo(nfe=nfe, block=b, step=i, x=x, committed=committed, region=region))
        if not bool((x[:, r0:r1] == mask_id).any()):
            break
    return SampleOutput(sequences=x, generated=x[:, r0:r1], commit_step=commit_step, nfe=nfe)


def _fill_after_eos(x: torch.Tensor, r0: int, r1: int, eos_id: int, mask_id: int) -> torch.Tensor:
    """Turn every mask after the first committed EOS of each row into EOS; return what changed."""
    region = x[:, r0:r1]
    is_eos = region == eos_id
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    fill = after & (region == mask_id)
    changed = torch.zeros_like(x, dtype=torch.bool)
    if bool(fill.any()):
        region[fill] = eos_id
        changed[:, r0:r1] = fill
    return changed


def generate(
    model: Any,
    prompts: torch.Tensor | Sequence[Sequence[int]],
    sampler: Sampler,
    special: SpecialIds,
    *,
    attention_mask: torch.Tensor | None = None,
    pad_id: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    **model_kwargs: Any,
) -> SampleOutput:
    """Generate `sampler.config.gen_length` tokens after each prompt.

    Args:
        model: see the module docstring.
        prompts: (B, P) left-padded ids with `attention_mask`, or a list of token lists (padded here).
        sampler: the commit policy with its config.
        special: mask / EOS / EoT ids.
        attention_mask: (B, P) 1 for prompt tokens, 0 for left padding.
        pad_id: id used for padding lists (default: EOS, else 0); hidden from attention anyway.
        generator: randomness (same device as the model).
        callback: called after every step with a `StepInfo`.
        model_kwargs: passed to every model call (modality features, ...).

    Returns:
        SampleOutput; `generated` is (B, gen_length).
    """
    cfg = sampler.config
    if cfg.gen_length % cfg.block_length:
        raise SamplerError(f"gen_length {cfg.gen_length} is not divisible by block_length {cfg.block_length}")
    num_blocks = cfg.gen_length // cfg.block_length
    if cfg.steps % num_blocks:
        raise SamplerError(
            f"steps {cfg.steps} is not divisible by the number of blocks {num_blocks} (gen_length / block_length)"
        )
    if not isinstance(prompts, torch.Tensor):
        device = _model_device(model)
        fill = pad_id if pad_id is not None else (special.eos_id if special.eos_id is not None else 0)
        prompts, attention_mask = left_pad(prompts, fill, device)
    if prompts.dim() != 2:
        raise SamplerError(f"prompts must be (B, P), got shape {tuple(prompts.shape)}")
    b, p = prompts.shape
    limit = _context_length(model)
    if limit is not None and p + cfg.gen_length > limit:
        raise SamplerError(
            f"prompt length {p} + gen_length {cfg.gen_length} exceeds the model context of {limit} tokens"
        )
    if bool((prompts == special.mask_id).any()):
        raise SamplerError("prompts contain the mask token; use infill to fill masks inside a text")
    x = torch.full((b, p + cfg.gen_length), special.mask_id, dtype=torch.long, device=prompts.device)
    x[:, :p] = prompts
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.to(x.device), attention_mask.new_ones(b, cfg.gen_length)], dim=1)
    conditioned = torch.zeros_like(x, dtype=torch.bool)
    conditioned[:, :p] = True if attention_mask is None else attention_mask[:, :p].bool()
    blocks = _blocks(p, p + cfg.gen_length, cfg.block_length)
    return _denoise(
        model,
        x,
        attention_mask,
        (p, p + cfg.gen_length),
        blocks,
        cfg.steps // num_blocks,
        sampler,
        special,
        conditioned,
        generator,
        callback,
        model_kwargs,
    )


def infill(
    model: Any,
    input_ids: torch.Tensor,
    sampler: Sampler,
    special: SpecialIds,
    *,
    attention_mask: torch.Tensor | None = None,
    block_length: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    **model_kwargs: Any,
) -> SampleOutput:
    """Fill the mask tokens already present in `input_ids` (B, L), keeping every other token.

    The whole sequence is one block unless `block_length` is given (then blocks of that size are
    decoded left to right); `sampler.config.steps` is split evenly across blocks.
    Classifier-free guidance masks every given (non-mask, non-padding) token in the unconditional branch.
    """
    cfg = sampler.config
    if input_ids.dim() != 2:
        raise SamplerError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    b, n = input_ids.shape
    limit = _context_length(model)
    if limit is not None and n > limit:
        raise SamplerError(f"input length {n} exceeds the model context of {limit} tokens")
    blocks = _blocks(0, n, block_length or n)
    if cfg.steps % len(blocks):
        raise SamplerError(f"steps {cfg.steps} is not divisible by the number of blocks {len(blocks)}")
    x = input_ids.clone()
    given = x != special.mask_id
    if attention_mask is not None:
        given &= attention_mask.bool()
    return _denoise(
        model,
        x,
        attention_mask,
        (0, n),
        blocks,
        cfg.steps // len(blocks),
        sampler,
        special,
        given,
        generator,
        callback,
        model_kwargs,
    )
