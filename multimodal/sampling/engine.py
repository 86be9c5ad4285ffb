"""The decoding engine: the one object every caller decodes through.

Evaluation, `mmdiff sample`, ASR deliberation, protein generation and the server each hold an
`Engine`: a model, its tokenizer (for the special ids and to turn ids back into text) and a default
sampler config, on one device, with the seed and batch size decoding uses. It knows no task: tasks
lay their examples out as a `PromptBatch` (prompts to continue) or a `MultimodalBatch` (a canvas to
infill or score), and the engine encodes the batch's media once, runs the one generation loop
(generate.py) with the features reused at every step, and decodes answers.

Per-call settings: every method takes a sampler config (or a built sampler) that replaces the
default for that call, so callers with their own decoding (DSM's sampler for proteins, one token per
step for deliberation, a request's own settings in the server) share the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from multimodal.diffusion.likelihood import batch_elbo
from multimodal.sampling.base import Sampler, SamplerConfig, SpecialIds, StepInfo, create_sampler
from multimodal.sampling.generate import generate, infill
from multimodal.types import DiffusionModel, MediaFeatures, ModalityIO, PromptBatch, SampleOutput


@dataclass(frozen=True)
class EncodedMedia:
    """A batch's media run through the modality adapters once.

    Attributes:
        features: what every model call of the generation splices in (None: no media).
        extras: the towers' auxiliary outputs (CTC logits, ...) with ``rows``, by modality.
    """

    features: MediaFeatures | None = None
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class Engine:
    """Decoding with one model.

    Args:
        model: the backbone, the multimodal model or a DSM model (see generate.py for the contract).
        tokenizer: any tokenizer with ``mask_id``, ``eos_id``, ``pad_id``, ``decode`` (``eot_id`` if chat).
        sampler: the default decoding settings (None: SamplerConfig's defaults).
        device: where the model runs (None: where it already is); the model is put in eval mode.
        seed: seed of `generator()` (evaluations draw their noise from it, so they repeat exactly).
        batch_size: examples decoded together by callers that batch (evaluation, deliberation).
    """

    def __init__(
        self,
        model: DiffusionModel,
        tokenizer: Any,
        sampler: SamplerConfig | None = None,
        *,
        device: torch.device | str | None = None,
        seed: int = 0,
        batch_size: int = 64,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = (model.to(device) if device is not None else model).eval()
        self.tokenizer = tokenizer
        self.sampler_config = sampler or SamplerConfig()
        self.seed, self.batch_size = seed, batch_size
        self.special = SpecialIds(tokenizer.mask_id, tokenizer.eos_id, getattr(tokenizer, "eot_id", None))
        self.pad_id = tokenizer.pad_id
        self._default: Sampler | None = None

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    @property
    def vocab_size(self) -> int:
        """Rows of the model's output head (its config's vocab_size; the tokenizer's size if it has none)."""
        config = getattr(self.model, "config", None)
        return getattr(config, "vocab_size", None) or len(self.tokenizer)

    @property
    def modalities(self) -> dict[str, ModalityIO]:
        """What tasks need to lay out each of the model's modalities (empty for a text-only model)."""
        io = getattr(self.model, "modality_io", None)
        return io() if io is not None else {}

    def generator(self, seed: int | None = None) -> torch.Generator:
        """A generator on the model's device seeded with `seed` (default: the engine's seed)."""
        return torch.Generator(device=self.device).manual_seed(self.seed if seed is None else seed)

    def sampler(self, config: SamplerConfig | Sampler | None = None, **overrides: Any) -> Sampler:
        """The sampler of a call: `config` (a config or a built sampler), else the default, with `overrides`."""
        if isinstance(config, Sampler) and not overrides:
            return config
        if config is None and not overrides:
            if self._default is None:
                self._default = create_sampler(self.sampler_config)
            return self._default
        base = config.config if isinstance(config, Sampler) else (config or self.sampler_config)
        return create_sampler(replace(base, **overrides) if overrides else base)

    @torch.no_grad()
    def encode(self, batch: Any) -> EncodedMedia:
        """Run the adapters over the media of a `PromptBatch` or `MultimodalBatch` (nothing without media)."""
        inputs = getattr(batch, "modality_inputs", None)
        if not inputs:
            return EncodedMedia()
        device = self.device
        features, masks, extras = self.model.encode(
            {k: v.to(device) for k, v in inputs.items()},
            {k: v.to(device) for k, v in batch.modality_masks.items()},
        )
        return EncodedMedia(MediaFeatures(features, masks), extras)

    @torch.no_grad()
    def generate(
        self,
        batch: PromptBatch | Sequence[Sequence[int]],
        sampler: SamplerConfig | Sampler | None = None,
        *,
        generator: torch.Generator | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        media: EncodedMedia | None = None,
    ) -> SampleOutput:
        """Continue each prompt with `gen_length` tokens (the sampler's); the towers' extras come back on the output."""
        if not isinstance(batch, PromptBatch):
            batch = PromptBatch([list(p) for p in batch])
        media = media if media is not None else self.encode(batch)
        out = generate(
            self.model,
            batch.prompts,
            self.sampler(sampler),
            self.special,
            pad_id=self.pad_id,
            generator=generator,
            callback=callback,
            media=media.features,
        )
        return replace(out, extras=media.extras)

    @torch.no_grad()
    def infill(
        self,
        batch: Any,
        sampler: SamplerConfig | Sampler | None = None,
        *,
        block_length: int | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        media: EncodedMedia | None = None,
    ) -> SampleOutput:
        """Fill the mask tokens of `batch.input_ids` (B, L) (a MultimodalBatch, padding in its attention mask)."""
        media = media if media is not None else self.encode(batch)
        device = self.device
        mask = batch.attention_mask
        out = infill(
            self.model,
            batch.input_ids.to(device),
            self.sampler(sampler),
            self.special,
            attention_mask=None if mask is None else mask.to(device),
            block_length=block_length,
            generator=generator,
            callback=callback,
            media=media.features,
        )
        return replace(out, extras=media.extras)

    @torch.no_grad()
    def logits(self, batch: Any, media: EncodedMedia | None = None) -> torch.Tensor:
        """(B, L, V) float32 logits of one forward over `batch.input_ids`, masks and media as given.

        Rotary positions are the batch's `position_ids`, else counted from each row's first real token
        (as generation counts them, so left padding changes nothing), else 0..L-1.
        """
        media = media if media is not None else self.encode(batch)
        device = self.device
        mask = None if batch.attention_mask is None else batch.attention_mask.to(device)
        positions = getattr(batch, "position_ids", None)
        if positions is None and mask is not None and mask.dim() == 2:
            positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.model(
            batch.input_ids.to(device),
            attention_mask=mask,
            position_ids=None if positions is None else positions.to(device),
            return_logits=False,
            media=media.features,
        )
        return self.model.head(out.hidden_states).float()

    @torch.no_grad()
    def elbo(
        self, batch: Any, draws: int = 16, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) Monte-Carlo ELBO (nats) of each row's maskable tokens given the rest, and its standard error.

        `batch` is a MultimodalBatch holding the clean sequences; media are encoded once for all draws
        (multimodal/diffusion/likelihood.py, `batch_elbo`).
        """
        media = self.encode(batch)

        def logits_fn(xt: torch.Tensor) -> torch.Tensor:
            return self.logits(replace(batch, input_ids=xt), media)

        ids = batch.input_ids.to(self.device)
        return batch_elbo(logits_fn, ids, batch.maskable, self.special.mask_id, draws, generator)

    def text(self, ids: Sequence[int]) -> str:
        """Answer text of generated ids: everything before the first EOS (or EoT), special tokens dropped."""
        ids = list(ids)
        stops = {self.special.eos_id, self.special.eot_id} - {None}
        for i, tok in enumerate(ids):
            if tok in stops:
                ids = ids[:i]
                break
        return self.tokenizer.decode([t for t in ids if t != self.special.mask_id])

    def texts(self, out: SampleOutput) -> list[str]:
        """The answer text of every row of a generation."""
        return [self.text(row) for row in out.generated.cpu().tolist()]
