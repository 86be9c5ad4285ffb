"""Sequence packing: short token-only documents concatenated into full rows, isolated by the attention mask.

Padding a batch to its longest row wastes compute when lengths vary (proteins: 20 to 256 residues).
`PackedCollate` wraps a task's collate: it lays every sample out alone with that collate (so each
document keeps exactly the prompt / answer / EOS pattern and maskable positions the task gives it, its
answer canvas included when the task fixes `answer_length`), then packs the documents into rows of
`pack_length` tokens. Each packed row carries

* a (B, L, L) boolean block-diagonal attention mask: a document attends to itself only, never across;
  a padding position attends only to itself (a query that sees no key at all makes some SDPA kernels
  return NaN, which would reach real tokens through 0 x NaN in the next layer), and no document sees it;
* position ids restarting at 0 for every document, as if it were alone (padding: 0);
* `document_ids` (B, L): 0..D-1 numbered across the batch in row-major order, -1 on padding; the loss
  uses them to draw one t per document and to normalise ``answer`` per document (diffusion/loss.py);
* `maskable` as each document had it alone; the padding tail is never maskable.

The result is exact: a document's logits in a packed row equal its logits alone (tests/test_packing.py).

Bin packing is first-fit decreasing over the samples of one call: the DataLoader hands the collate a
batch of N samples, already shuffled, and every one of them must come out (a collate keeps no state
between calls, and DataLoader workers or DDP ranks would not share it), so the aim is the fewest rows
for those N documents. Sorting longest first and putting each document into the first row with room
leaves less padding than sequential next-fit, which closes a row as soon as the next document does not
fit. The order of documents inside a batch does not matter to the loss.

Batch size semantics: `train.batch_size` stays the number of documents (samples) per optimiser step, the
same as unpacked, so the ``answer`` loss averages over the same number of documents and the learning
rate needs no change; what varies is the number of rows B (between ceil(tokens / pack_length) and N).

Modality inputs (images, audio, protein encoder inputs) are refused: their features are spliced at
placeholder positions per row, which packing would have to renumber. So are one-sample layouts that
carry their own (Q, K) attention mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multimodal.types import MultimodalBatch


@dataclass(frozen=True)
class Document:
    """One sample laid out alone: its real tokens only (no padding).

    Attributes:
        input_ids: (n,) token ids.
        maskable: (n,) bool, positions the diffusion may mask.
        meta: the sample's meta entry.
    """

    input_ids: torch.Tensor
    maskable: torch.Tensor
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def document_from_batch(batch: MultimodalBatch, index: int = 0) -> Document:
    """The single row of a one-sample batch as a `Document`, its padding dropped.

    Raises:
        ValueError: when the batch has several rows, modality inputs or a (Q, K) attention mask.
    """
    name = batch.meta[0].get("id", index) if batch.meta else index
    if batch.input_ids.shape[0] != 1:
        raise ValueError(f"sample {name}: the collate returned {batch.input_ids.shape[0]} rows for one sample")
    if batch.modality_inputs:
        kinds = ", ".join(sorted(batch.modality_inputs))
        raise ValueError(f"sample {name} has modality inputs ({kinds}): sequence packing takes token-only samples")
    keep = torch.ones_like(batch.input_ids[0], dtype=torch.bool)
    if batch.attention_mask is not None:
        if batch.attention_mask.dim() != 2:
            raise ValueError(f"sample {name} has a (Q, K) attention mask of its own: it cannot be packed")
        keep = batch.attention_mask[0].bool()
    meta = batch.meta[0] if batch.meta else {}
    return Document(batch.input_ids[0][keep], batch.maskable[0][keep], meta)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of at most `capacity`: longest first, each into the first bin with room.

    Ties keep the input order, so the result is deterministic. Items longer than `capacity` are the
    caller's to refuse.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def document_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal attention of packed rows: (B, L) document ids -> (B, L, L) bool.

    Query i may attend key j iff both belong to the same document; a padding position (-1) attends
    only itself (module docstring) and no document attends it.
    """
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, L, L)
    real = (document_ids >= 0)[:, :, None] & (document_ids >= 0)[:, None, :]
    eye = torch.eye(document_ids.shape[1], dtype=torch.bool, device=document_ids.device)[None]  # (1, L, L)
    return (same & real) | eye


def pack_documents(documents: Sequence[Document], pack_length: int, pad_id: int = 0) -> MultimodalBatch:
    """Pack documents into rows of `pack_length` tokens (first-fit decreasing).

    Args:
        documents: the documents of one batch.
        pack_length: row length L.
        pad_id: token id written in the padding tail (never attended, never maskable).

    Returns:
        A MultimodalBatch with input_ids / maskable / position_ids / document_ids (B, L), the (B, L, L)
        attention mask, and `meta` in document-id order.

    Raises:
        ValueError: on an empty batch, a non-positive `pack_length`, or a document longer than it.
    """
    if pack_length < 1:
        raise ValueError(f"pack_length must be positive, got {pack_length}")
    if not documents:
        raise ValueError("nothing to pack: the batch holds no documents")
    for i, doc in enumerate(documents):
        if len(doc) > pack_length:
            name = doc.meta.get("id", i)
            raise ValueError(f"document {name} has {len(doc)} tokens, more than pack_length {pack_length}")
    rows = first_fit_decreasing([len(d) for d in documents], pack_length)
    ids = torch.full((len(rows), pack_length), pad_id, dtype=torch.long)
    maskable = torch.zeros((len(rows), pack_length), dtype=torch.bool)
    positions = torch.zeros((len(rows), pack_length), dtype=torch.long)
    doc_ids = torch.full((len(rows), pack_length), -1, dtype=torch.long)
    meta, next_id = [], 0
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            doc, end = documents[i], start + len(documents[i])
            ids[r, start:end] = doc.input_ids
            maskable[r, start:end] = doc.maskable
            positions[r, start:end] = torch.arange(len(doc))
            doc_ids[r, start:end] = next_id
            meta.append(doc.meta)
            start, next_id = end, next_id + 1
    return MultimodalBatch(
        input_ids=ids,
        maskable=maskable,
        attention_mask=document_attention_mask(doc_ids),
        position_ids=positions,
        meta=meta,
        document_ids=doc_ids,
    )


class PackedCollate:
    """A DataLoader collate_fn: each sample laid out alone by `collate`, then all of them packed.

    Picklable (DataLoader workers, ddp_spawn) when `collate` is, e.g. a functools.partial of
    `Task.collate`. N samples in, however many rows they fill out (module docstring).

    Args:
        collate: samples -> MultimodalBatch (the task's unpacked collate), called with one sample at a time.
        pack_length: row length L (at most the backbone's max_seq_len).
        pad_id: token id of the padding tail.
    """

    def __init__(self, collate: Callable[[Sequence[Any]], MultimodalBatch], pack_length: int, pad_id: int = 0):
        if pack_length < 1:
            raise ValueError(f"pack_length must be positive, got {pack_length}")
        self.collate, self.pack_length, self.pad_id = collate, pack_length, pad_id

    def __call__(self, samples: Sequence[Any]) -> MultimodalBatch:
        documents = []
        for i, sample in enumerate(samples):
            media = getattr(sample, "media", None)  # a task Layout: refuse media before laying it out
            if media and any(media.values()):
                name = getattr(sample, "meta", {}).get("id", i)
                kinds = ", ".join(sorted(k for k, v in media.items() if v))
                raise ValueError(f"sample {name} has {kinds} inputs: sequence packing takes token-only samples")
            documents.append(document_from_batch(self.collate([sample]), i))
        return pack_documents(documents, self.pack_length, self.pad_id)
