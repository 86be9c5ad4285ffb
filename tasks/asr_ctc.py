"""Best-path transcripts of a speech tower's CTC head, scored next to the diffusion decoder's.

A tower trained with the auxiliary CTC loss (multimodal/diffusion/ctc.py) returns its frame scores
with every generation (``SampleOutput.extras[modality]["ctc_logits"]``); the ASR task decodes them
greedily and scores them as a second system: the gap to the diffusion decoder's WER says whether
the encoder or the backbone limits it. ASR-only, so it lives with the task, not in the engine.
"""

from __future__ import annotations

from typing import Any

import torch

from multimodal.types import SampleOutput


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor, blank_id: int) -> list[list[int]]:
    """Best-path CTC decoding: the most likely class of each real frame, repeats merged, blanks dropped.

    Args:
        logits: (n, T, V) frame scores.
        lengths: (n,) real frames per item.
        blank_id: the blank class.

    Returns:
        One token-id list per item.
    """
    out = []
    for best, n in zip(logits.argmax(-1).tolist(), lengths.tolist(), strict=True):
        ids = [t for i, t in enumerate(best[:n]) if t != blank_id and (i == 0 or t != best[i - 1])]
        out.append(ids)
    return out


def ctc_transcripts(out: SampleOutput, tokenizer: Any, blank_id: int) -> list[str] | None:
    """Best-path transcripts of the first tower with a CTC head, one per row (a row's items joined), or
    None when no tower has one."""
    for aux in out.extras.values():
        if "ctc_logits" not in aux:
            continue
        texts = [""] * out.generated.shape[0]
        hypotheses = ctc_greedy(aux["ctc_logits"].cpu(), aux["lengths"].cpu(), blank_id)
        for row, ids in zip(aux["rows"].tolist(), hypotheses, strict=True):
            texts[row] = f"{texts[row]} {tokenizer.decode(ids)}".strip()
        return texts
    return None
