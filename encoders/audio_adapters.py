"""Speech adapters (projectors from `SequenceFeatures` to backbone embeddings), PAPERS.md section 4.

* DIFFA's ``diffa_semantic``, ``diffa_acoustic`` and ``diffa_dual``: encoders/diffa.py.
* Whisper-LLaDA's ``window_qformer``: encoders/whisper_llada.py.
* ``sequence_linear`` / ``sequence_mlp``: a linear map (or LLaVA's two-layer MLP) of the last layer,
  one token per real position, for from-scratch speech towers and protein encoders.

Every adapter can prepend learned prompt vectors (`prompt_vectors`, DIFFA stage 1 uses 20). They
return (tokens (B, N, D), valid (B, N)) and say how many tokens a clip gives (from its real and
padded encoder frame counts).

`feature_mask` (the fields of encoders/spec_augment.py's SpecAugment, ``{}`` for its defaults): in
training, bands of channels and stretches of frames of the encoder's last layer are zeroed before the
adapter reads it, SpecAugment on the features instead of the spectrogram. It is for frozen towers
whose features are cached (``cache_features``): the tower runs once per clip, so masking its input
would be the same mask every epoch, while masking its output draws a new one every step.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from encoders.base import SequenceFeatures, TokenCount
from encoders.projectors import PROJECTORS
from encoders.spec_augment import SpecAugment


def _valid(lengths: torch.Tensor, n: int) -> torch.Tensor:
    return torch.arange(n, device=lengths.device)[None] < lengths[:, None]


class PromptVectors(nn.Module):
    """`count` learned embeddings prepended to an adapter's tokens."""

    def __init__(self, count: int, dim: int):
        super().__init__()
        self.count = count
        self.vectors = nn.Parameter(torch.randn(count, dim) * 0.02) if count else None

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.count:
            return tokens, valid
        b = tokens.shape[0]
        prompt = self.vectors.to(tokens.dtype)[None].expand(b, -1, -1)
        return torch.cat([prompt, tokens], 1), torch.cat([valid.new_ones(b, self.count), valid], 1)


class SpeechAdapter(nn.Module):
    """Base: subclasses implement `tokens(features)` and `frames_to_tokens(frames)`."""

    def __init__(self, out_dim: int, prompt_vectors: int = 0, feature_mask: dict | None = None):
        super().__init__()
        self.prompt = PromptVectors(prompt_vectors, out_dim)
        self.feature_mask = SpecAugment(**feature_mask) if feature_mask is not None else None

    def frames_to_tokens(self, frames: TokenCount) -> int:
        raise NotImplementedError

    def output_tokens(self, frames: TokenCount) -> int:
        return self.prompt.count + self.frames_to_tokens(frames)

    def tokens(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and self.feature_mask is not None:
            masked = self.feature_mask(features.last.transpose(1, 2), features.lengths).transpose(1, 2)
            features = replace(features, hidden_states=(*features.hidden_states[:-1], masked))
        return self.prompt(*self.tokens(features))


class PerPosition(SpeechAdapter):
    """One token per real position of the last layer: a linear map, or two layers with a GELU."""

    def __init__(
        self, in_dim: int, out_dim: int, prompt_vectors: int = 0, mlp: bool = False, feature_mask: dict | None = None
    ):
        super().__init__(out_dim, prompt_vectors, feature_mask)
        self.proj = (
            nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
            if mlp
            else nn.Linear(in_dim, out_dim)
        )

    def frames_to_tokens(self, frames: TokenCount) -> int:
        return frames.real

    def tokens(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(features.last), _valid(features.lengths, features.last.shape[1])


PROJECTORS.register("sequence_linear", PerPosition)
PROJECTORS.register(
    "sequence_mlp",
    lambda in_dim, out_dim, prompt_vectors=0, feature_mask=None: PerPosition(
        in_dim, out_dim, prompt_vectors, mlp=True, feature_mask=feature_mask
    ),
)
