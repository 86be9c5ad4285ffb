"""ASR deliberation (Whisper-LLaDA): mask part of a first-pass hypothesis and refill it with the
audio-conditioned diffusion model.

Modes (PAPERS.md section 4):

* ``random``: mask `mask_ratio` of the hypothesis tokens, chosen uniformly, and refill them together;
* ``low_confidence``: one extra forward scores every hypothesis token under the audio (with the
  whole hypothesis masked, the input a masked diffusion model is trained on) and the least probable
  `mask_ratio` are masked and refilled;
* ``chunks``: semi-autoregressive: the hypothesis is split into `chunks` contiguous pieces, and each in
  turn is masked entirely and refilled with the rest visible.

The hypothesis keeps its token count (deliberation refills, it does not insert or delete). The
text-only control (`text_only`) runs the same model with the audio withheld: Whisper-LLaDA's finding
is that it does not help, so the gain must come from listening.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from multimodal.sampling import SamplerConfig, SpecialIds, create_sampler, infill
from tasks.base import Layout, Task


@dataclass
class DeliberationConfig:
    """Attributes: mode, mask_ratio, chunks (module docstring); text_only withholds the audio;
    steps_per_token = 1 refills one token per model call."""

    mode: Literal["random", "low_confidence", "chunks"] = "low_confidence"
    mask_ratio: float = 0.3
    chunks: int = 4
    text_only: bool = False


def _strip_media(layout: Layout) -> Layout:
    prompt = layout.prompt
    for token in ("<audio>", "<image>"):
        prompt = prompt.replace(token, "")
    return replace(layout, prompt=" ".join(prompt.split()), media={})


@torch.no_grad()
def deliberate(
    model: Any,
    task: Task,
    tokenizer: Any,
    modalities: dict[str, Any],
    layouts: Sequence[Layout],
    hypotheses: Sequence[str],
    config: DeliberationConfig,
    special: SpecialIds,
    generator: torch.Generator | None = None,
) -> tuple[list[str], int]:
    """Refill part of each hypothesis; returns the new hypotheses and the model calls made."""
    if config.text_only:
        layouts = [_strip_media(lay) for lay in layouts]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = task.prompt_batch(layouts, tokenizer, modalities if not config.text_only else {})
    kwargs: dict[str, Any] = {}
    if batch.modality_inputs:
        features, masks, _ = model.encode(
            {k: v.to(device) for k, v in batch.modality_inputs.items()},
            {k: v.to(device) for k, v in batch.modality_masks.items()},
        )
        kwargs = {"modality_features": features, "feature_masks": masks}
    hyp_ids = [tokenizer.encode(h) for h in hypotheses]
    width_p = max(len(p) for p in batch.prompts)
    width_h = max(1, max(len(h) for h in hyp_ids))
    b = len(hyp_ids)
    ids = torch.full((b, width_p + width_h), tokenizer.eos_id, dtype=torch.long)
    attention = torch.ones_like(ids)
    region = torch.zeros_like(ids, dtype=torch.bool)  # hypothesis tokens
    for i, (p, h) in enumerate(zip(batch.prompts, hyp_ids, strict=True)):
        pad = width_p - len(p)
        ids[i, :pad], attention[i, :pad] = tokenizer.pad_id, 0
        ids[i, pad:width_p] = torch.tensor(p, dtype=torch.long)
        if h:
            ids[i, width_p : width_p + len(h)] = torch.tensor(h, dtype=torch.long)
            region[i, width_p : width_p + len(h)] = True
    ids, attention, region = ids.to(device), attention.to(device), region.to(device)
    calls = 0
    if config.mode == "chunks":
        for chosen in chunk_masks(region, config.chunks):
            ids, n = _refill(model, ids, attention, chosen, special, generator, kwargs)
            calls += n
    else:
        if config.mode == "low_confidence":
            scores = _scores(model, ids, attention, region, special, kwargs)
            calls += 1
        else:
            scores = torch.rand(ids.shape, generator=generator, device=generator.device if generator else "cpu")
            scores = scores.to(device)
        ids, n = _refill(
            model, ids, attention, select_lowest(scores, region, config.mask_ratio), special, generator, kwargs
        )
        calls += n
    out = []
    for i in range(b):
        tokens = ids[i][region[i]].tolist()
        out.append(tokenizer.decode([t for t in tokens if t not in (special.eos_id, special.mask_id)]))
    return out, calls


def select_lowest(scores: torch.Tensor, region: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, L) bool: in each row, the round(ratio * n) lowest-scored of its n hypothesis positions."""
    chosen = torch.zeros_like(region)
    for i in range(region.shape[0]):
        n = int(round(ratio * int(region[i].sum())))
        if n:
            candidates = torch.where(region[i], scores[i].float(), torch.full_like(scores[i].float(), float("inf")))
            chosen[i, candidates.topk(n, largest=False).indices] = True
    return chosen


def chunk_masks(region: torch.Tensor, chunks: int) -> list[torch.Tensor]:
    """`chunks` (B, L) masks splitting each row's hypothesis positions into contiguous pieces, in order."""
    index = region.long().cumsum(1) - 1  # rank of each hypothesis position within its row
    lengths = region.sum(1, keepdim=True)
    piece = torch.div(index * chunks, lengths.clamp_min(1), rounding_mode="floor")
    return [region & (piece == c) for c in range(chunks)]


def _scores(model, ids, attention, region, special, kwargs) -> torch.Tensor:
    """Probability of each hypothesis token with the whole hypothesis masked (one forward)."""
    masked = torch.where(region, torch.full_like(ids, special.mask_id), ids)
    pos = (attention.cumsum(-1) - 1).clamp_min(0)
    hidden = model(masked, attention_mask=attention, position_ids=pos, return_logits=False, **kwargs).hidden_states
    logp = model.head(hidden).float().log_softmax(-1)
    return logp.gather(-1, ids[..., None]).squeeze(-1)


def _refill(model, ids, attention, chosen, special, generator, kwargs) -> tuple[torch.Tensor, int]:
    """Mask `chosen` and infill them one token per model call, most confident first."""
    n = int(chosen.sum(1).max())
    if n == 0:
        return ids, 0
    canvas = torch.where(chosen, torch.full_like(ids, special.mask_id), ids)
    sampler = create_sampler(SamplerConfig(steps=n, gen_length=n, block_length=n))
    out = infill(model, canvas, sampler, special, attention_mask=attention, generator=generator, **kwargs)
    return out.sequences, out.nfe
