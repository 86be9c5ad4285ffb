"""Speech towers: the Whisper encoder (transformers, local weights) and a small conv + transformer
encoder trained from scratch for CPU demos.

Inputs are Whisper log-mel features with one extra row marking real frames: (n_mels + 1, T), the
last row 1 for real frames and 0 for padding (added by `preprocess`), so clips of different
lengths stack into one batch and every tower knows its real lengths. Towers return
`SequenceFeatures` (encoders/base.py): every layer's hidden states (B, T', C) and the real output
lengths, which the adapters
(audio_adapters.py) need: DIFFA's semantic adapter reads the last layer, its acoustic Q-Former
several intermediate ones, Whisper-LLaDA's window Q-Former fixed time windows.

Whisper works on 30 s windows: a longer clip is an error naming its duration (split it first).
The from-scratch tower takes the real length, and can carry a CTC head whose auxiliary loss makes
it learn in minutes (DiffusionConfig.ctc_weight); pretrained Whisper needs none.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoders.audio_io import SAMPLE_RATE, WINDOW_SECONDS, load_audio, log_mel, real_frames
from encoders.base import ENCODERS, EncoderSpec, ModalityEncoder, SequenceFeatures, TokenCount
from encoders.spec_augment import SpecAugment
from encoders.vtlp import VTLP
from encoders.weights import load_into, load_state_dict


def with_validity(features: torch.Tensor, real_frames: int) -> torch.Tensor:
    """Append the real-frame row: (n_mels, T) -> (n_mels + 1, T)."""
    valid = torch.zeros(1, features.shape[1], dtype=features.dtype)
    valid[0, :real_frames] = 1.0
    return torch.cat([features, valid])


def split_validity(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n_mels + 1, T) -> features (B, n_mels, T) and real frame counts (B,)."""
    return inputs[:, :-1], inputs[:, -1].gt(0.5).sum(-1)


class SpeechTower(ModalityEncoder):
    """Shared preprocessing: any audio source -> 16 kHz mono -> log-mel + validity row."""

    modality = "audio"

    def __init__(self, spec: EncoderSpec, output_dim: int):
        super().__init__()
        self.spec, self.output_dim = spec, output_dim

    @property
    def n_mels(self) -> int:
        return int(self.spec.preprocess.get("n_mels", 80))

    def preprocess(self, raw: Any) -> torch.Tensor:
        wave = raw if isinstance(raw, torch.Tensor) else load_audio(raw)
        limit = getattr(self, "max_frames", None)  # encoders without a fixed window
        real = real_frames(wave.numel())
        if limit is not None and real > limit:
            raise ValueError(
                f"audio of {wave.numel() / SAMPLE_RATE:.1f} s is longer than the {limit * 160 / SAMPLE_RATE:.1f} s "
                "this encoder takes; split it first"
            )
        pad = self.spec.preprocess.get("pad_seconds")
        features = log_mel(wave, self.n_mels, pad_seconds=pad)
        return with_validity(features, min(real, features.shape[1]))

    def output_frames(self, input_frames: int) -> int:
        raise NotImplementedError

    def num_tokens(self, inputs: torch.Tensor | None) -> TokenCount:
        """Output frames of a preprocessed clip (the adapter turns them into a token count)."""
        if inputs is None:
            raise ValueError("speech token counts depend on the clip: pass its features")
        return TokenCount(self.output_frames(int(inputs[-1].gt(0.5).sum())), self.output_frames(inputs.shape[-1]))


class WhisperTower(SpeechTower):
    """The Whisper encoder (transformers) from a local folder, on 30 s padded windows."""

    def __init__(self, folder: str | None = None, config: Any = None, preprocess: dict[str, Any] | None = None):
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if folder is not None:
            path = Path(folder)
            if not path.is_dir():
                raise FileNotFoundError(f"Whisper folder not found: {path} (weights load from local paths only)")
            config = WhisperConfig.from_pretrained(str(path), local_files_only=True)
        elif config is None:
            raise ValueError("WhisperTower needs a local folder or a config")
        encoder = WhisperEncoder(config)
        if folder is not None:
            state = load_state_dict(folder)
            for prefix in ("model.encoder.", "encoder."):
                if any(k.startswith(prefix) for k in state):
                    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                    break
            load_into(encoder, state, str(folder))
        settings = {"n_mels": config.num_mel_bins, "pad_seconds": WINDOW_SECONDS, **(preprocess or {})}
        super().__init__(EncoderSpec(folder, settings), config.d_model)
        self.encoder = encoder

    def output_frames(self, input_frames: int) -> int:
        return (input_frames + 1) // 2  # the second convolution has stride 2

    def lock(self, unlocked_groups: int = 0) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        for layer in list(self.encoder.layers)[len(self.encoder.layers) - unlocked_groups :] if unlocked_groups else []:
            for p in layer.parameters():
                p.requires_grad_(True)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> SequenceFeatures:
        features, frames = split_validity(inputs)
        out = self.encoder(features, output_hidden_states=True)
        lengths = (frames + 1) // 2
        return SequenceFeatures(tuple(out.hidden_states), lengths)


class ConvSpeechEncoder(SpeechTower):
    """From-scratch encoder: two stride-2 convolutions (4x subsampling) + transformer layers (+ CTC head)."""

    def __init__(
        self,
        width: int = 192,
        layers: int = 2,
        heads: int = 4,
        n_mels: int = 80,
        ctc_vocab: int = 0,
        dropout: float = 0.0,
        spec_augment: dict[str, Any] | None = None,
        preprocess: dict[str, Any] | None = None,
        vtlp: dict[str, Any] | None = None,
    ):
        super().__init__(EncoderSpec(None, {"n_mels": n_mels, "pad_seconds": None, **(preprocess or {})}), width)
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment is not None else None
        self.vtlp = VTLP(**vtlp) if vtlp is not None else None
        self.subsample = nn.Sequential(
            nn.Conv1d(n_mels, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.ctc_head = nn.Linear(width, ctc_vocab) if ctc_vocab else None
        self.max_frames = 4096

    def output_frames(self, input_frames: int) -> int:
        return math.ceil(math.ceil(input_frames / 2) / 2)

    def _positions(self, n: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
        div = torch.exp(
            torch.arange(0, self.output_dim, 2, device=device).float() * (-math.log(10000.0) / self.output_dim)
        )
        table = torch.zeros(n, self.output_dim, device=device)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        return table

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> SequenceFeatures:
        features, frames = split_validity(inputs)
        if self.training and self.vtlp is not None:
            features = self.vtlp(features, frames)
        if self.training and self.spec_augment is not None:
            features = self.spec_augment(features, frames)
        x = self.subsample(features).transpose(1, 2)  # (B, T/4, C)
        lengths = torch.div(torch.div(frames + 1, 2, rounding_mode="floor") + 1, 2, rounding_mode="floor")
        pad = torch.arange(x.shape[1], device=x.device)[None] >= lengths[:, None]  # True = padding
        x = x + self._positions(x.shape[1], x.device).to(x.dtype)
        states = [x]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
            states.append(x)
        states[-1] = self.norm(x)
        extras = {} if self.ctc_head is None else {"ctc_logits": self.ctc_head(states[-1])}
        return SequenceFeatures(tuple(states), lengths, extras)


@ENCODERS.register("whisper")
def whisper(weights: str | None = None, preprocess: dict[str, Any] | None = None) -> WhisperTower:
    """A Whisper encoder from a local folder (DIFFA: whisper-small; Whisper-LLaDA: large-v3, 128 mels)."""
    if weights is None:
        raise ValueError("the 'whisper' encoder needs weights: a local Whisper folder")
    return WhisperTower(weights, preprocess=preprocess)


@ENCODERS.register("whisper_tiny")
def whisper_tiny(n_mels: int = 80, layers: int = 4, preprocess: dict[str, Any] | None = None) -> WhisperTower:
    """A 4-layer, 32-wide random Whisper encoder on 2 s windows: tests."""
    from transformers import WhisperConfig

    config = WhisperConfig(
        num_mel_bins=n_mels,
        d_model=32,
        encoder_layers=layers,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        max_source_positions=100,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return WhisperTower(None, config, {"pad_seconds": 2.0, **(preprocess or {})})


@ENCODERS.register("conv_speech")
def conv_speech(
    width: int = 192,
    layers: int = 2,
    heads: int = 4,
    n_mels: int = 80,
    ctc_vocab: int = 0,
    dropout: float = 0.0,
    spec_augment: dict[str, Any] | None = None,
    preprocess: dict[str, Any] | None = None,
    vtlp: dict[str, Any] | None = None,
) -> ConvSpeechEncoder:
    """The from-scratch speech encoder (optionally with a CTC head over `ctc_vocab` classes, and in
    training SpecAugment masking and VTLP frequency warping: `spec_augment` / `vtlp` hold the fields of
    SpecAugment / VTLP, {} for the defaults)."""
    return ConvSpeechEncoder(width, layers, heads, n_mels, ctc_vocab, dropout, spec_augment, preprocess, vtlp)


__all__ = ["SAMPLE_RATE", "ConvSpeechEncoder", "WhisperTower"]
