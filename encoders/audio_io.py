"""Audio input: decoding files to 16 kHz mono, and Whisper's log-mel features.

Files are decoded with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, MP3 in recent builds) and
resampled with torchaudio, which has no decoder of its own here. Corrupt or empty audio is one
clear error naming the source. Features follow Whisper's front end exactly: 400-point Hann STFT
with hop 160 at 16 kHz (the last frame dropped), power spectrum, Slaney mel filters (80 or 128
bins), log10 clamped at 1e-10, floored at (max - 8), then (x + 4) / 4. The parity test compares
with transformers' WhisperFeatureExtractor.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_SECONDS = 30.0  # Whisper's encoder window


def load_audio(source: str | Path | bytes, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode a file (path or encoded bytes) to a mono float32 waveform at `sample_rate`, shape (T,)."""
    import soundfile as sf

    name = "audio bytes" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise FileNotFoundError(f"audio file not found: {name}")
    try:
        data, rate = sf.read(
            io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source),
            dtype="float32",
            always_2d=True,
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"audio file not found: {name}") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"corrupt or unsupported audio ({name}): {err}") from None
    cut = _wav_truncation(source)
    if cut is not None:
        raise ValueError(f"truncated audio ({name}): {cut}")
    if data.shape[0] == 0:
        raise ValueError(f"empty audio: {name}")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        import torchaudio.functional as AF

        wave = AF.resample(wave, rate, sample_rate)
    return wave


def _wav_truncation(source: str | Path | bytes) -> str | None:
    """For a RIFF/WAVE file whose data chunk is shorter than its header declares (a copy cut short), what is
    missing; None otherwise. libsndfile reads such a file without complaint, up to where it ends."""
    if isinstance(source, (bytes, bytearray)):
        raw = bytes(source)
    else:
        with open(source, "rb") as f:
            if f.read(4) != b"RIFF":
                return None
            raw = b"RIFF" + f.read()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(raw):
        chunk, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            held = len(raw) - pos - 8
            if size in (0, 0xFFFFFFFF) or held >= size:  # unknown size (a streamed file), or complete
                return None
            return f"the header declares {size} bytes of samples, the file holds {held}"
        pos += 8 + size + (size % 2)
    return None


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Slaney-scale, Slaney-normalised mel filterbank (as librosa / Whisper)."""
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(
        n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
    )
    return fb.t()


def log_mel(wave: torch.Tensor, n_mels: int = 80, pad_seconds: float | None = None) -> torch.Tensor:
    """Whisper log-mel features of a (T,) waveform at 16 kHz: (n_mels, frames).

    Args:
        wave: mono waveform.
        n_mels: 80 (Whisper up to large-v2) or 128 (large-v3).
        pad_seconds: zero-pad (never truncate) the waveform to this duration first, as Whisper pads
            every clip to its 30 s window; None keeps the real length (frames = T // 160).
    """
    wave = wave.float()
    if pad_seconds is not None:
        target = int(pad_seconds * SAMPLE_RATE)
        if wave.numel() > target:
            raise ValueError(
                f"audio of {wave.numel() / SAMPLE_RATE:.1f} s is longer than the {pad_seconds:.0f} s "
                "window; split it into windows first"
            )
        wave = torch.nn.functional.pad(wave, (0, target - wave.numel()))
    stft = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[..., :-1].abs() ** 2  # (n_fft/2 + 1, frames): Whisper drops the last frame
    mel = mel_filters(n_mels).to(power.dtype) @ power
    logspec = torch.clamp(mel, min=1e-10).log10()
    logspec = torch.maximum(logspec, logspec.max() - 8.0)
    return (logspec + 4.0) / 4.0


def num_frames(num_samples: int) -> int:
    """Feature frames of a waveform of `num_samples` samples (what log_mel returns without padding)."""
    return num_samples // HOP


def real_frames(num_samples: int) -> int:
    """Frames that hold the clip in a padded window: ceil(samples / 160), as transformers'
    WhisperFeatureExtractor's attention mask (its sample mask read every 160th sample), which the
    released Whisper-based systems take their audio lengths from."""
    return -(-num_samples // HOP)
