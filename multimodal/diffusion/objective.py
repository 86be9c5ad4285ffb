"""The training objective as one function: sample t, mask maskable tokens, score masked positions.

`DiffusionConfig` names the knobs of PAPERS.md section 1: the schedule and its eps / clipping,
antithetic time sampling, LLaDA's random-length truncation of pre-training batches, BERT's corruption
for the masked-LM baseline, the token weight (1/p from the schedule, or 1 for plain cross-entropy as in
Whisper-LLaDA), and the loss normalisation (see loss.py). The model is any callable with the backbone's
forward signature and a `head` (plus `head_weight` when the head is a plain matrix); no Lightning, no I/O.

Packed batches (`batch.document_ids` set, multimodal/train/packing.py) draw one t per document rather
than per row (antithetic across the batch's documents), so the documents sharing a row get their own
mask rates and weights, exactly as if each were a row of its own; loss.py normalises per document.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from multimodal.diffusion.block_diffusion import bd3_attention, block_ids, block_times
from multimodal.diffusion.cart import cart_weights
from multimodal.diffusion.corruption import bert_corruption, mask_tokens, random_truncation_length
from multimodal.diffusion.ctc import ctc_auxiliary
from multimodal.diffusion.loss import masked_diffusion_loss
from multimodal.diffusion.schedule import MaskSchedule, create_schedule
from multimodal.types import LossOutput, MediaItems, MultimodalBatch


@dataclass
class DiffusionConfig:
    """Masked-diffusion objective settings.

    Attributes:
        schedule: registered schedule name (llada_linear, loglinear, cosine).
        eps: schedule floor (LLaDA: p = (1 - eps) t + eps).
        clip_low, clip_high: restrict mask rates to [clip_low, clip_high] (BD3-LM), or None.
        antithetic: stratify t across the batch (t_i = (u + i/B) mod 1).
        truncate_prob: probability of cropping a batch to a random length in [1, L] (LLaDA
            pre-training uses 0.01; keep 0 for SFT).
        weighting: ``schedule`` divides each masked CE by p (the schedule weight); ``none`` is plain CE;
            ``cart`` is Dream's context-adaptive token weight (cart.py, rate `cart_p`).
        normalisation: ``sequence`` (pre-training), ``answer`` (SFT), ``tokens`` (DIFFA), ``masked``.
        chunk_size: rows per chunk of the output head in the loss.
        mask_rate: the fixed rate of the ``constant`` schedule (masked-LM baseline).
        random_token_prob, keep_prob: BERT's corruption of the selected positions, as ESM trains its
            masked LM (0.1 and 0.1: 80 % mask token, 10 % random token, 10 % unchanged; all scored);
            0 and 0 (default) mask every selected position, as masked diffusion does.
        ctc_weight: weight of an auxiliary CTC loss on modality towers that have a CTC head (speech
            encoders trained from scratch; 0 disables it).
        block_size: train block diffusion (BD3-LM) with blocks of this many answer tokens, one t per
            block, over ``[x_t ; x_0]`` (block_diffusion.py); decode it with ``sampler.attention:
            block_causal`` and ``sampler.block_length`` equal to it. None: one t per row (LLaDA).
        block_schedule: LLaDA2's block-size warm-up / decay as ``[[from_step, size], ...]`` (size 0: no
            blocks); when set it decides `block_size` at each step (train/module.py).
        complementary: LLaDA2's complementary masking: every row also trains with the maskable tokens
            its mask left clean masked (and those it masked clean), so each answer token is masked once
            per pair; the second copy's weight is 1 / (1 - p(t)).
    """

    schedule: str = "llada_linear"
    eps: float = 1e-3
    clip_low: float | None = None
    clip_high: float | None = None
    antithetic: bool = True
    truncate_prob: float = 0.0
    weighting: Literal["schedule", "none", "cart"] = "schedule"
    cart_p: float = 0.3
    normalisation: Literal["sequence", "answer", "tokens", "masked"] = "answer"
    chunk_size: int = 512
    mask_rate: float = 0.15
    random_token_prob: float = 0.0
    keep_prob: float = 0.0
    ctc_weight: float = 0.0
    block_size: int | None = None
    block_schedule: list[list[int]] = field(default_factory=list)
    complementary: bool = False

    def __post_init__(self):
        for entry in self.block_schedule:
            if len(entry) != 2 or entry[0] < 0 or entry[1] < 0:
                raise ValueError(f"block_schedule entries are [from_step, size] with both >= 0, got {entry}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be a positive number of tokens, got {self.block_size}")
        shares = {"random_token_prob": self.random_token_prob, "keep_prob": self.keep_prob}
        for name, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if sum(shares.values()) > 1.0:
            raise ValueError(f"random_token_prob + keep_prob must be at most 1, got {sum(shares.values())}")

    def build_schedule(self) -> MaskSchedule:
        return create_schedule(self.schedule, self.eps, self.clip_low, self.clip_high, self.mask_rate)


def diffusion_loss(
    model: Any,
    batch: MultimodalBatch,
    config: DiffusionConfig,
    schedule: MaskSchedule,
    mask_id: int,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> LossOutput:
    """Corrupt `batch` and return the masked-diffusion loss of `model` on it (plus the auxiliary CTC
    term when configured; `eos_id` and `pad_id` then say what the transcript targets exclude)."""
    x0, maskable, attn, pos = batch.input_ids, batch.maskable, batch.attention_mask, batch.position_ids
    docs = batch.document_ids
    length = random_truncation_length(x0.shape[1], config.truncate_prob, generator, x0.device)
    if length < x0.shape[1]:
        x0, maskable = x0[:, :length], maskable[:, :length]
        if attn is not None:  # (B, L) padding mask, or (B, Q, K) / (B, 1, Q, K): crop queries and keys
            attn = attn[:, :length] if attn.dim() == 2 else attn[..., :length, :length]
        pos = None if pos is None else pos[:, :length]
        docs = None if docs is None else docs[:, :length]
    blocks = None
    if config.block_size:
        if docs is not None:
            raise ValueError("block diffusion (diffusion.block_size) does not take packed rows (train.pack_length)")
        blocks = block_ids(maskable, config.block_size)
        t = block_times(blocks, schedule, config.antithetic, generator)
    elif docs is None:
        t = schedule.sample_t(x0.shape[0], antithetic=config.antithetic, generator=generator, device=x0.device)
    else:  # one t per document: (D,) drawn, then spread over its positions (B, L); padding takes document 0's
        num_docs = max(int(docs.max()) + 1, 1)
        t_doc = schedule.sample_t(num_docs, antithetic=config.antithetic, generator=generator, device=x0.device)
        t = t_doc[docs.clamp_min(0)]
    p_mask = schedule.mask_prob(t)
    xt, masked = mask_tokens(x0, p_mask, maskable, mask_id, generator)
    xt = bert_corruption(xt, x0, masked, maskable, config.random_token_prob, config.keep_prob, generator)
    # multimodal: the model encodes the items and splices them at the placeholders
    media = MediaItems(batch.modality_inputs, batch.modality_masks) if batch.modality_inputs else None
    weight = _token_weight(config, schedule, t, masked, attn)
    if config.complementary:  # LLaDA2's SFT: each row again with the other maskable tokens masked
        if docs is not None or config.random_token_prob or config.keep_prob:
            raise ValueError("diffusion.complementary takes unpacked rows and plain masking")
        x0, xt, masked, maskable, weight, attn, pos, blocks, media = _complement(
            config, schedule, mask_id, t, p_mask, x0, xt, masked, maskable, weight, attn, pos, blocks, media
        )
    if blocks is None:
        out = model(xt, attention_mask=attn, position_ids=pos, return_logits=False, media=media)
    else:
        out = _block_forward(model, xt, x0, blocks, attn, pos, media)
    head = getattr(model, "head_weight", None)  # a plain linear head takes the fused path
    result = masked_diffusion_loss(
        out.hidden_states,
        head if isinstance(head, torch.Tensor) else model.head,
        x0,
        masked,
        weight,
        maskable,
        config.normalisation,
        config.chunk_size,
        docs,
    )
    if config.ctc_weight > 0 and out.extras:
        if eos_id is None:
            raise ValueError("the auxiliary CTC loss needs eos_id")
        ctc = ctc_auxiliary(out.extras, x0, maskable, eos_id, pad_id)
        if ctc is not None:
            result = replace(result, loss=result.loss + config.ctc_weight * ctc, ctc=float(ctc.detach()))
    if out.aux_loss is not None:  # the backbone's own term (LLaDA-MoE's router losses), already weighted
        result = replace(result, loss=result.loss + out.aux_loss, aux=float(out.aux_loss.detach()))
    return result


def _block_forward(model: Any, xt, x0, blocks, attn, pos, media) -> Any:
    """BD3-LM's one forward over ``[x_t ; x_0]`` (block_diffusion.py); the x_t half's hidden states back."""
    if media is not None:
        raise ValueError("block diffusion (diffusion.block_size) trains on text rows; these rows carry media")
    if attn is not None and attn.dim() != 2:
        raise ValueError("block diffusion builds its own attention mask: pass a (B, L) padding mask or none")
    n = xt.shape[1]
    if pos is None:
        pos = torch.arange(n, device=xt.device).expand(xt.shape[0], n)
    both = torch.cat((xt, x0), dim=1)
    out = model(both, attention_mask=bd3_attention(blocks, attn), position_ids=torch.cat((pos, pos), dim=1),
                return_logits=False)  # fmt: skip
    return replace(out, hidden_states=out.hidden_states[:, :n])


def _token_weight(config: DiffusionConfig, schedule: MaskSchedule, t, masked, attn) -> torch.Tensor:
    """(B,) or (B, L) weight of the masked tokens: 1/p(t), ones, or CART's."""
    if config.weighting == "cart":
        return cart_weights(masked, attn if attn is not None and attn.dim() == 2 else None, config.cart_p)
    return schedule.loss_weight(t) if config.weighting == "schedule" else torch.ones_like(t)


def block_size_at(schedule: list[list[int]], step: int) -> int | None:
    """The block size of a LLaDA2-style schedule at optimiser step `step`: the size of the last
    ``[from_step, size]`` entry that has begun (0: no blocks, plain masked diffusion)."""
    size = 0
    for start, value in schedule:
        if step >= start:
            size = value
    return size or None


def _complement(config, schedule, mask_id, t, p_mask, x0, xt, masked, maskable, weight, attn, pos, blocks, media):
    """The batch followed by its complementary copy: the maskable tokens the first mask left clean are
    masked (and the masked ones clean), weighted 1 / (1 - p(t)) under the schedule weighting."""
    flipped = maskable & ~masked
    b, n = x0.shape
    if config.weighting == "schedule":
        other = 1.0 / (1.0 - p_mask).clamp_min(1e-6)
    else:
        other = _token_weight(config, schedule, t, flipped, attn)

    def rows(w: torch.Tensor) -> torch.Tensor:
        return w if w.dim() == 2 else w[:, None].expand(b, n)

    def twice(v):
        return None if v is None else torch.cat((v, v))

    xt = torch.cat((xt, torch.where(flipped, torch.full_like(x0, mask_id), x0)))
    weight = torch.cat((rows(weight), rows(other)))
    masked = torch.cat((masked, flipped))
    if media is not None:
        media = MediaItems(
            {k: twice(v) for k, v in media.inputs.items()}, {k: twice(v) for k, v in media.masks.items()}
        )
    return twice(x0), xt, masked, twice(maskable), weight, twice(attn), twice(pos), twice(blocks), media
