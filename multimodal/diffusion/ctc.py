"""An auxiliary CTC loss on a modality tower, for speech encoders trained from scratch.

A pure masked-diffusion loss gives a randomly initialised speech encoder almost no signal at first
(the backbone can lower the loss from the text alone); CTC on the encoder's frames against the
transcript makes it learn to hear within minutes. The targets are each row's answer tokens (EOS
padding excluded); the blank is the padding id, which never occurs in answers. Pretrained towers
(Whisper) do not need it.

At evaluation the head's best-path transcripts (tasks/asr_ctc.py) are scored next to the diffusion
decoder's: the gap between the two says whether the encoder or the backbone limits the WER.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ctc_auxiliary(
    extras: dict[str, dict[str, torch.Tensor]],
    x0: torch.Tensor,
    maskable: torch.Tensor,
    eos_id: int,
    blank_id: int,
) -> torch.Tensor | None:
    """Mean CTC loss over the items of every modality that produced ``ctc_logits``; None if none did.

    Args:
        extras: model output extras: modality -> {"ctc_logits": (n, T, V), "lengths": (n,), "rows": (n,)}.
        x0: (B, L) clean token ids.
        maskable: (B, L) bool, the answer positions.
        eos_id: EOS id (answer padding, dropped from the targets).
        blank_id: the CTC blank class.
    """
    losses = []
    for aux in extras.values():
        if "ctc_logits" not in aux:
            continue
        logits, lengths, rows = aux["ctc_logits"], aux["lengths"], aux["rows"]
        targets, target_lengths = [], []
        for r in rows.tolist():
            answer = x0[r][maskable[r]]
            answer = answer[(answer != eos_id) & (answer != blank_id)]
            targets.append(answer)
            target_lengths.append(answer.numel())
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, n, V)
        loss = F.ctc_loss(
            log_probs,
            torch.cat(targets),
            lengths.cpu(),
            torch.tensor(target_lengths),
            blank=blank_id,
            reduction="mean",
            zero_infinity=True,
        )
        losses.append(loss)
    return torch.stack(losses).mean() if losses else None
