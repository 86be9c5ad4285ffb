"""The few data types that cross layer boundaries (backbone, objective, sampler, tasks).

They are frozen dataclasses of tensors so that every layer agrees on names and shapes:
B = batch, L = sequence length, V = vocabulary, D = model width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class BackboneOutput:
    """What a backbone forward returns.

    Attributes:
        logits: (B, L, V) output-head scores, or None when the caller asked for hidden states only.
        hidden_states: (B, L, D) final hidden states after the last norm (input of the head), when requested.
        cache: the updated key/value cache, when one was passed in.
        extras: auxiliary outputs of modality towers, by modality (e.g. CTC logits for an auxiliary loss).
        aux_loss: a weighted training term of the backbone itself, added to the objective (LLaDA-MoE's
            load-balancing and router z-losses), or None.
    """

    logits: torch.Tensor | None
    hidden_states: torch.Tensor | None = None
    cache: Any = None
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    aux_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class MediaItems:
    """A batch's raw media, by modality: the model encodes them in its forward (training).

    Attributes:
        inputs: modality -> (B, K, ...) up to K preprocessed items per row.
        masks: modality -> (B, K) bool, which items exist (missing: all).
    """

    inputs: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class MediaFeatures:
    """A batch's media already through the modality adapters, by modality: decoding encodes once and the
    model splices the features at the placeholders at every step.

    Attributes:
        features: modality -> (B, N, D) projected features, each row's items one after another.
        valid: modality -> (B, N) bool, which feature vectors are real (missing: all).
    """

    features: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor] = field(default_factory=dict)


Media = MediaItems | MediaFeatures


class DiffusionModel(Protocol):
    """What decoding needs of a model (the LLaDA backbone, the multimodal model, ESM2 with DSM's head).

    A call runs token ids (with the media spliced at their placeholders) through the network and returns
    hidden states (and logits unless `return_logits` is false); `head` turns hidden states into logits;
    `cache` / `cache_start` are the key/value cache and the canvas positions the inputs overwrite
    (multimodal/backbone/cache.py). `config.max_seq_len` bounds the canvas.
    """

    config: Any

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        cache_start: int | torch.Tensor = 0,
        return_logits: bool = True,
        media: Media | None = None,
    ) -> BackboneOutput: ...

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Any: ...


@dataclass(frozen=True)
class MultimodalBatch:
    """One training or generation batch.

    Attributes:
        input_ids: (B, L) token ids; modality placeholder positions hold a placeholder id.
        attention_mask: (B, L) 1 for real tokens, 0 for padding; None means no padding.
        maskable: (B, L) bool, positions the diffusion may mask (answer tokens only, their EOS padding
            included); prompts, modality and padding positions are never masked.
        position_ids: (B, L) rotary positions, or None for 0..L-1.
        modality_inputs: per-modality preprocessed inputs (pixel values, log-mel features, ...).
        modality_masks: per-modality validity masks of those inputs.
        meta: ids, references and anything else the metrics need, one entry per sample (per document
            when packed).
        document_ids: (B, L) long, for packed rows (multimodal/train/packing.py): the document each
            position belongs to, numbered 0..D-1 across the whole batch in row-major order, -1 on padding.
            When set, the loss samples t per document and normalises ``answer`` per document; None means
            one document per row.
    """

    input_ids: torch.Tensor
    maskable: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    modality_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    modality_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: list[dict[str, Any]] = field(default_factory=list)
    document_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> MultimodalBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return MultimodalBatch(
            input_ids=move(self.input_ids),  # type: ignore[arg-type]
            maskable=move(self.maskable),  # type: ignore[arg-type]
            attention_mask=move(self.attention_mask),
            position_ids=move(self.position_ids),
            modality_inputs={k: v.to(device) for k, v in self.modality_inputs.items()},
            modality_masks={k: v.to(device) for k, v in self.modality_masks.items()},
            meta=self.meta,
            document_ids=move(self.document_ids),
        )

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        if self.document_ids is not None:  # packed: the attention mask is (B, L, L)
            return int((self.document_ids >= 0).sum())
        if self.attention_mask is None:
            return self.input_ids.numel()
        return int(self.attention_mask.sum())


@dataclass(frozen=True)
class LossOutput:
    """The masked-diffusion loss and what it was computed from.

    Attributes:
        loss: scalar to back-propagate.
        num_masked: number of masked (scored) positions.
        num_maskable: number of positions that could have been masked.
        mean_ce: plain mean cross-entropy over masked positions (unweighted, for logging).
        accuracy: argmax accuracy over masked positions (for logging), or None when not computed.
        ctc: the auxiliary CTC loss when one was added (for logging).
        aux: the backbone's own weighted term when one was added (for logging; `BackboneOutput.aux_loss`).
    """

    loss: torch.Tensor
    num_masked: int
    num_maskable: int
    mean_ce: float
    accuracy: float | None = None
    ctc: float | None = None
    aux: float | None = None


@dataclass(frozen=True)
class SampleOutput:
    """The result of `generate` or `infill`.

    Attributes:
        sequences: (B, L) the final canvas (prompt + generated tokens, padding kept).
        generated: (B, G) the generated region only.
        commit_step: (B, G) the step at which each generated token was committed (-1: never masked).
        nfe: number of network forward evaluations actually run.
        extras: auxiliary outputs of the modality towers for the prompts' media, by modality (e.g. a
            speech tower's CTC logits, with ``rows``: the batch row of each item); empty without media.
    """

    sequences: torch.Tensor
    generated: torch.Tensor
    commit_step: torch.Tensor
    nfe: int
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptBatch:
    """Prompts ready for generation: token lists plus stacked modality inputs (B, K, ...) and item masks (B, K)."""

    prompts: list[list[int]]
    modality_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    modality_masks: dict[str, torch.Tensor] = field(default_factory=dict)


class Tokenizer(Protocol):
    """What tasks and the CLI need from a tokenizer (built-in or Hugging Face)."""

    mask_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class ModalityIO:
    """What a task needs to lay out one modality for a model.

    Attributes:
        name: modality name ("image", "audio", ...).
        placeholder_id: token id of the placeholder written once per item in the prompt.
        num_tokens: preprocessed item -> embeddings it becomes (its placeholder is expanded to that many
            tokens; constant for images, growing with duration for speech).
        preprocess: raw item (image, waveform, ...) -> tensor the adapter takes.
    """

    name: str
    placeholder_id: int
    num_tokens: Any
    preprocess: Any
