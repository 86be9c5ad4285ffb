"""The one generation loop: `generate` (prompt + masked answer canvas) and `infill` (given masks),
both block by block through `decode_block` (the steps of one block), which the continuous batch of a
server (batching.py) runs as well, with rows that joined at different times.

LLaDA's reference loop (PAPERS.md section 1): the decoded region is split into blocks decoded left
to right; the steps are split evenly across blocks; each step runs one forward over the whole canvas,
asks the sampler which masked positions of the current block to commit, and commits them. Beyond the
reference, this loop handles:

* batches of prompts with different lengths: prompts are left-padded, padding keys are hidden from
  attention and rotary positions skip the padding, so each row decodes exactly as it would alone
  (the reference counts positions from the first pad, which changes the result);
* classifier-free guidance (the unconditional branch masks the prompt, both branches in one forward);
* EOS early stop (everything after a committed EOS becomes EOS, exhausted blocks are skipped);
* key/value caches and block-causal attention (forward.py), and adaptive policies that commit a
  variable number of tokens per step (the loop then runs until the block is filled);
* the output head applied only to the current block's positions;
* a per-step callback and the step at which each token was committed (to draw the denoising order).

Host synchronisations (the GPU must finish before Python can read a value; each one drains the
launch queue, so the loop keeps them to what a stop condition needs):

* per generation, before the loop: the check that prompts hold no mask token and whether the
  attention mask has padding (forward.py);
* per step, only for adaptive policies (threshold, factor, entropy_bounded, first_hitting: the loop
  runs until the block is filled) or with ``stop_at_eos`` (a committed EOS fills the block early and
  the block's remaining steps are skipped): one ``.item()`` at the top of steps 1.. of a block; it
  decides whether another forward runs, so it cannot be deferred without running (and counting) a
  forward that commits nothing;
* per block, only with ``stop_at_eos`` or in `infill` (a block may already be complete): one ``int``
  that says whether this block has masks and whether any later block has (skip the block, or stop:
  the all-committed early exit). `generate` without EOS stop needs none: its blocks start fully masked;
* per block, the ``dsm`` policy's step count (masks // step_divisor) and, per refresh cycle, the
  ``delayed`` cache's recomputed width (forward.py), both sizes that decide shapes.

So a fixed-schedule policy without EOS stop (low_confidence, random, dilated) runs the whole
generation without a synchronisation. Commits, EOS fill and commit steps are written with
``torch.where`` / ``masked_fill_`` (no boolean-mask indexing, whose result size is data-dependent).
The model call sees the same shapes at every step of a block (forward.py) and can be compiled
(``SamplerConfig.compile``, compiled.py).

The model is a `DiffusionModel` (multimodal/types.py): ``model(input_ids, attention_mask=, position_ids=,
return_logits=False, cache=, cache_start=, media=)`` returning hidden states, with a ``head`` method (the
backbone, the multimodal model and ESM2 with DSM's head all are); a generation's media go to every call
as one `MediaFeatures`, encoded once (Engine.encode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from multimodal.sampling.base import Sampler, SamplerError, SpecialIds, StepInfo
from multimodal.sampling.forward import CanvasForward
from multimodal.types import DiffusionModel, Media, SampleOutput


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


def _context_length(model: DiffusionModel) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_seq_len", None)


def _model_device(model: DiffusionModel) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _blocks(start: int, end: int, block_length: int) -> list[tuple[int, int]]:
    return [(s, min(s + block_length, end)) for s in range(start, end, block_length)]


@torch.no_grad()
def _denoise(
    model: DiffusionModel,
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
    media: Media | None,
    blocks_start_masked: bool = False,
) -> SampleOutput:
    """Decode the masked positions of x[:, region] block by block (shared by generate and infill).

    `blocks_start_masked`: every block is all masks when the loop reaches it unless an EOS stop fills it
    (generate), so the per-block check can be skipped.
    """
    cfg = sampler.config
    mask_id = special.mask_id
    forward = CanvasForward(model, x, attention_mask, conditioned, blocks, cfg, special, media)
    r0, r1 = region
    commit_step = torch.where(x[:, r0:r1] == mask_id, -2, -1).to(x.device)  # -1: given, -2: not yet committed
    eos_stop = cfg.stop_at_eos and special.eos_id is not None
    # Host synchronisations (module docstring): per block only when a block may start without masks (or complete).
    check_blocks = eos_stop or not blocks_start_masked
    for b, (s, e) in enumerate(blocks):
        masked = x[:, s:e] == mask_id  # (B, Lb)
        if check_blocks:  # one sync: 2 * (this block has masks) + (a later block has masks)
            state = int(2 * masked.any() + (x[:, e:r1] == mask_id).any())
            if state == 0:  # earlier blocks are complete: the whole region is decoded
                break
            if state == 1:  # nothing to do in this block
                continue
        decode_block(forward, b, sampler, special, generator, steps_per_block, region, commit_step, callback=callback)
    return SampleOutput(sequences=x, generated=x[:, r0:r1], commit_step=commit_step, nfe=forward.nfe)


def decode_block(
    forward: CanvasForward,
    b: int,
    sampler: Any,
    special: SpecialIds,
    generator: torch.Generator | None,
    steps_per_block: int,
    region: tuple[int, int],
    commit_step: torch.Tensor | None = None,
    stop_rows: torch.Tensor | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> None:
    """The denoising steps of block `b` of `forward.x` (the canvas, updated in place): the loop's body.

    Each step runs one model call for the block's logits, asks the sampler which masked positions to
    commit and commits them. Used by `generate` / `infill` for every block of a fixed batch, and by the
    continuous batch (batching.py), whose rows are different requests (then `sampler` is a per-row
    `RowSamplers` and `stop_rows` says which rows stop at EOS).

    Args:
        forward: the canvas's model calls (forward.py).
        b: index of the block in `forward.blocks`.
        sampler: the commit policy (`steps_for`, `quota`, `step`, `adaptive`).
        steps_per_block: the configured steps of a block (fixed-schedule policies).
        region: (start, end) columns of the decoded region; EOS fill and `commit_step` cover it.
        commit_step: (B, end - start) step index of each commit, written in place (None: not kept).
        stop_rows: (B,) bool rows whose sampler stops at EOS (None: the sampler config's `stop_at_eos`).
            The loop ends a block early once it is filled only if the sampler is `adaptive` or its config
            stops at EOS (RowSamplers is adaptive when every row would end early alone).
        callback: called after every step with a `StepInfo`.
    """
    x, mask_id = forward.x, special.mask_id
    s, e = forward.blocks[b]
    r0, r1 = region
    stops = bool(getattr(sampler.config, "stop_at_eos", False))  # RowSamplers: no config, rows decide
    eos_stop = (stops or stop_rows is not None) and special.eos_id is not None
    # One host synchronisation per step, only when a stop condition needs it (module docstring).
    check_steps = sampler.adaptive or stops
    masked = x[:, s:e] == mask_id  # (B, Lb)
    n_steps = sampler.steps_for(masked.sum(-1), e - s, steps_per_block)
    quota = sampler.quota(masked.sum(-1), n_steps)  # (B, n_steps)
    for i in range(n_steps):
        if i:
            masked = x[:, s:e] == mask_id
            if check_steps and not masked.any().item():  # the block is filled: stop early
                break
        logits = forward.logits(b, i)
        x0, commit = sampler.step(logits, masked, quota[:, i], special, generator, step=i)
        x[:, s:e] = torch.where(commit, x0, x[:, s:e])
        committed = torch.zeros_like(x, dtype=torch.bool)
        committed[:, s:e] = commit
        if eos_stop:
            committed |= _fill_after_eos(x, r0, r1, special, stop_rows)
        if commit_step is not None:
            commit_step.masked_fill_(committed[:, r0:r1], forward.nfe - 1)
        if callback is not None:
            callback(StepInfo(forward.nfe, b, i, x, committed, region, (s, e), logits, x0))


def _fill_after_eos(
    x: torch.Tensor, r0: int, r1: int, special: SpecialIds, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Turn every mask after the first committed EOS, or chat end-of-turn (EoT), of each row (of `rows`,
    default all) into EOS; return what changed (B, L). An instruct model ends its answer with EoT and
    pads the rest with EOS, so either one ends it."""
    region = x[:, r0:r1]  # a view: filled in place
    eos_id, mask_id = special.eos_id, special.mask_id
    is_eos = region == eos_id
    if special.eot_id is not None:
        is_eos |= region == special.eot_id
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    fill = after & (region == mask_id)
    if rows is not None:
        fill &= rows[:, None]
    region.masked_fill_(fill, eos_id)
    changed = torch.zeros_like(x, dtype=torch.bool)
    changed[:, r0:r1] = fill
    return changed


def generate(
    model: DiffusionModel,
    prompts: torch.Tensor | Sequence[Sequence[int]],
    sampler: Sampler,
    special: SpecialIds,
    *,
    attention_mask: torch.Tensor | None = None,
    pad_id: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    media: Media | None = None,
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
        media: the prompts' media given to every model call: encoded once (`MediaFeatures`, as Engine.encode
            does) or raw items the model encodes at every call (`MediaItems`).

    Returns:
        SampleOutput; `generated` is (B, gen_length).
    """
    cfg = sampler.config  # its shapes were checked when it was made (SamplerConfig)
    num_blocks = cfg.gen_length // cfg.block_length
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
        media,
        blocks_start_masked=True,
    )


def infill(
    model: DiffusionModel,
    input_ids: torch.Tensor,
    sampler: Sampler,
    special: SpecialIds,
    *,
    attention_mask: torch.Tensor | None = None,
    block_length: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    media: Media | None = None,
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
        media,
    )
