"""The embedded spoken corpus: short English utterances synthesised offline with eSpeak NG.

Texts are digit strings ("three seven one"), numbers ("two hundred and five"), smart-home commands ("turn on the
kitchen light") and short sentences from a small grammar, all lower-case without punctuation over a vocabulary of
a few hundred words, so a word-level tokenizer covers them. Each utterance is read by one of several eSpeak voices
(accent + ``+m1``/``+f2``-style variant) at a random speed and pitch, gets white noise at a random SNR and is
resampled to 16 kHz mono float32. It stands in for LibriSpeech in the Whisper-LLaDA / DIFFA recipes
(PAPERS.md section 4) when no download is allowed.

What makes the test split informative: every text occurs once in the whole corpus, so train, validation and test
sentences are disjoint (the model cannot pass by memorising transcripts), and the held-out voices read only part
of the test split (records say ``held_out_voice``), so WER on unseen voices is reported apart from seen ones.

Two kinds of unseen voice, kept apart because they test different things:

* ``held_out_voices`` are unseen speakers: an eSpeak variant (the speaker's timbre, pitch and formants) never
  heard in training, reading with a training accent. This is what a held-out speaker of LibriSpeech's test sets
  is, the setting the Whisper-LLaDA and DIFFA figures come from; they read part of the ``test`` split.
* ``accent_voices`` speak with an accent no training voice has (eSpeak's West Midlands voice drops /h/, New
  York's changes the vowels), a domain shift rather than a new speaker. They read the test sentences once more
  as the ``test_accents`` split, so its WER compares with ``test`` on the same sentences.

eSpeak is driven through its C API (speak_lib.h) with ``ctypes`` on the library shipped by the pip package
``espeakng-loader``. The library keeps hidden state across calls (pitch flutter phase, gain control, noise
generator), so the same text comes out slightly different on a second call. A helper process therefore loads and
initialises the library once and forks a fresh child for every utterance: each one starts from the same pristine
state, which makes the audio, and with fixed tar headers the shards, byte-identical for a given seed. Where
``os.fork`` is missing (Windows) the helper synthesises in-process and audio is only approximately reproducible.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import hashlib
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.records import write_shard_index

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
SPLITS = ("train", "validation", "test", "test_accents")

# ----------------------------------------------------------------------------------------------- texts
ONES = "zero one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_CARRIERS = ("", "", "page", "room", "number", "the code is", "it costs", "i counted", "we need", "channel")
TEXT_KINDS = {"digits": 0.2, "number": 0.2, "command": 0.3, "sentence": 0.3}


def number_words(n: int) -> str:
    """Spell ``0 <= n < 10000`` the British way: 205 -> "two hundred and five", 1030 -> "one thousand and thirty"."""
    if not 0 <= n < 10000:
        raise ValueError(f"number_words covers 0..9999, got {n}")
    if n < 20:
        return ONES[n] if n < 10 else TEENS[n - 10]
    if n < 100:
        return TENS[n // 10 - 2] + (f" {ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{ONES[n // 100]} hundred" + (f" and {number_words(n % 100)}" if n % 100 else "")
    rest = n % 1000
    return f"{ONES[n // 1000]} thousand" + ("" if not rest else (" and " if rest < 100 else " ") + number_words(rest))


# Commands are templates whose {slots} are filled from these word lists; sentences follow
# noun-phrase verb noun-phrase [preposition noun-phrase] [adverb].
COMMANDS = (
    "turn {on_off} the {room} {device}",
    "switch {on_off} the {device} in the {room}",
    "dim the lights in the {room}",
    "set the {appliance} to {degrees} degrees",
    "start a timer for {minutes} minutes",
    "play some {genre} music in the {room}",
    "{open} the {openable}",
    "{contact} {name} {when}",
    "what is the weather in {city} {when}",
    "remind me to {errand} {when}",
    "turn the volume {up_down} in the {room}",
)
WORDS = {
    "on_off": ("on", "off"),
    "up_down": ("up", "down"),
    "room": ("kitchen", "bedroom", "bathroom", "garage", "office", "hallway", "garden", "living room", "dining room"),
    "device": ("light", "lights", "lamp", "fan", "heater", "radio", "television", "speaker"),
    "appliance": ("thermostat", "oven", "heating"),
    "degrees": tuple(number_words(n) for n in range(10, 100)),
    "minutes": tuple(number_words(n) for n in range(1, 61)),
    "genre": ("jazz", "rock", "classical", "pop", "country", "piano"),
    "open": ("open", "close", "lock"),
    "openable": ("front door", "back door", "garage door", "window", "curtains", "blinds"),
    "contact": ("call", "send a message to", "remind"),
    "name": ("anna", "peter", "maria", "david", "sarah", "james", "emma", "thomas", "lucy", "daniel"),
    "when": ("today", "tomorrow", "tonight", "this evening", "next week"),
    "city": ("london", "paris", "berlin", "madrid", "boston", "denver", "tokyo", "sydney", "dublin", "chicago"),
    "errand": ("buy milk", "feed the cat", "water the plants", "pay the bill", "check the mail", "walk the dog"),
    "determiner": ("the", "a", "this", "that", "my", "your", "his", "her", "our"),
    "adjective": tuple(
        "small big red blue green old new happy quiet bright dark heavy little young tall yellow white black warm "
        "cold tired clever strange lovely".split()
    ),
    "noun": tuple(
        "dog cat bird horse fish child teacher farmer doctor student ball book box chair table car boat train house "
        "river tree apple letter key cup hat coat bag map phone clock bottle garden window door picture song".split()
    ),
    "verb": tuple(
        "sees saw likes liked finds found carries carried takes took watches watched follows followed paints "
        "painted moves moved buys bought needs wants opens opened".split()
    ),
    "preposition": ("near", "behind", "under", "beside", "in", "on", "by", "across", "from", "with"),
    "adverb": ("today", "again", "slowly", "quickly", "yesterday", "at night", "every day"),
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng: np.random.Generator) -> str:
    if rng.random() < 0.15:
        return _pick(rng, WORDS["name"])
    adjective = f" {_pick(rng, WORDS['adjective'])}" if rng.random() < 0.6 else ""
    return f"{_pick(rng, WORDS['determiner'])}{adjective} {_pick(rng, WORDS['noun'])}"


def _one_text(rng: np.random.Generator, kind: str) -> str:
    if kind == "digits":
        return " ".join(_pick(rng, ONES) for _ in range(int(rng.integers(3, 9))))
    if kind == "number":
        n = int(10 ** rng.uniform(0, 4)) % 10000  # log-uniform: one- to four-digit numbers equally common
        return f"{_pick(rng, NUMBER_CARRIERS)} {number_words(n)}".strip()
    if kind == "command":
        return re.sub(r"\{(\w+)\}", lambda slot: _pick(rng, WORDS[slot.group(1)]), _pick(rng, COMMANDS))
    words = [_noun_phrase(rng), _pick(rng, WORDS["verb"]), _noun_phrase(rng)]
    if rng.random() < 0.5:
        words += [_pick(rng, WORDS["preposition"]), _noun_phrase(rng)]
    if rng.random() < 0.25:
        words.append(_pick(rng, WORDS["adverb"]))
    return " ".join(words)


def make_texts(
    rng: np.random.Generator, n: int, weights: Mapping[str, float] | None = None, exclude: set[str] | None = None
) -> list[str]:
    """Draw ``n`` distinct utterance texts.

    Args:
        rng: source of all randomness; the same generator state gives the same list.
        n: number of texts.
        weights: relative frequency of each kind (``digits``, ``number``, ``command``, ``sentence``). Duplicates are
            redrawn, so kinds with few possible texts (commands) are under-represented in very large corpora.
        exclude: texts that must not be returned (for instance another split's).

    Returns:
        ``n`` distinct lower-case texts without punctuation.
    """
    weights = dict(TEXT_KINDS if weights is None else weights)
    unknown = set(weights) - set(TEXT_KINDS)
    if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"weights must map a subset of {sorted(TEXT_KINDS)} to non-negative numbers, got {weights}")
    kinds = sorted(weights)
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    p /= p.sum()
    seen, texts = set(exclude or ()), []
    for _ in range(50 * n + 1000):
        if len(texts) == n:
            return texts
        text = _one_text(rng, kinds[int(rng.choice(len(kinds), p=p))])
        if text not in seen:
            seen.add(text)
            texts.append(text)
    if len(texts) == n:
        return texts
    raise ValueError(f"could only draw {len(texts)} distinct texts of the {n} asked for with weights {weights}")


def vocabulary() -> list[str]:
    """Every word a generated text can contain, sorted (a few hundred, for a word-level tokenizer)."""
    phrases = [*ONES, *TEENS, *TENS, "hundred thousand and", *NUMBER_CARRIERS, *COMMANDS]
    phrases += [phrase for options in WORDS.values() for phrase in options]
    return sorted({word for phrase in phrases for word in re.sub(r"\{\w+\}", " ", phrase).split()})


# ----------------------------------------------------------------------------------------------- eSpeak NG binding
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: samples go to the callback, espeak_Synth returns when done
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_PARAM_RATE, _PARAM_PITCH = 1, 3  # espeak_PARAMETER
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
# int callback(short *wav, int numsamples, espeak_EVENT *events); returning 0 continues synthesis.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def unknown_variants(voices: Sequence[str]) -> list[str]:
    """The ``+variant`` parts of `voices` that eSpeak NG does not ship.

    eSpeak quietly reads an unknown variant with the accent's own voice, so a misspelt variant would give
    a corpus whose records name speakers it does not contain; the variant files are checked instead.
    """
    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted({v.split("+", 1)[1] for v in voices if "+" in v and not (folder / v.split("+", 1)[1]).is_file()})


class _Espeak:
    """The eSpeak NG library loaded and initialised in this process (used only inside the helper process)."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint]
        lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Info.argtypes, lib.espeak_Info.restype = [ctypes.c_void_p], ctypes.c_char_p
        # Breathy variants (+f2 ...) add noise from a generator that eSpeak seeds differently in every process.
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data path {data.decode()!r}")
        self.version = lib.espeak_Info(None).decode()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive for as long as the library may call it
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _collect(self, wav, numsamples, events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).astype("<i2"))
        return 0

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """Samples (int16, at ``self.sample_rate``) of ``text`` read by ``voice``."""
        if self._set_seed is not None:
            self._set_seed(zlib.crc32(f"{text}|{voice}|{rate}|{pitch}".encode()))
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(
                f"unknown eSpeak voice {voice!r} (try en-us, en, en-gb-scotland, en-gb-x-rp, with +m1..+f5)"
            )
        self._lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._chunks.clear()
        encoded = text.encode()
        status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise ValueError(f"espeak_Synth failed with status {status} on {text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype="<i2")


def _send(fd: int, status: int, body: bytes) -> None:
    view = memoryview(struct.pack("<ii", status, len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


def _reply(engine: _Espeak, request: dict, out: int) -> None:
    try:
        samples = engine.synth(request["text"], request["voice"], request["rate"], request["pitch"])
    except ValueError as error:
        _send(out, 1, str(error).encode())
        return
    _send(out, 0, samples.tobytes())


def _serve() -> None:
    """Helper process loop: one JSON request per stdin line, one ``<status, length, body>`` reply on stdout."""
    engine, out, can_fork = _Espeak(), sys.stdout.fileno(), hasattr(os, "fork")
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if request.get("op") == "info":
            info = {"version": engine.version, "sample_rate": engine.sample_rate, "isolated": can_fork}
            _send(out, 0, json.dumps(info).encode())
            continue
        if not can_fork:
            _reply(engine, request, out)
            continue
        pid = os.fork()
        if pid == 0:  # child: synthesise from the parent's pristine state, reply, and never return to the loop
            code = 1
            try:
                _reply(engine, request, out)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            _send(out, 2, f"synthesis of {request['text']!r} crashed (wait status {status})".encode())


class _Helper:
    """Client of the helper process. One per process (re-created after a fork)."""

    # Runs this file by path, not as ``tasks.synthetic.spoken``, so the helper stays small (no torch) and forks fast.
    _BOOT = "import runpy, sys; sys.path = [p for p in sys.path if p not in ('', '.')]; "
    _BOOT += "runpy.run_path(sys.argv[1], run_name='__espeak_server__')"

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", self._BOOT, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._lock = threading.Lock()
        self.info = json.loads(self.request({"op": "info"}))
        if not self.info["isolated"]:
            logger.warning("os.fork is unavailable: synthesised audio will not be exactly reproducible")

    def request(self, payload: dict) -> bytes:
        with self._lock:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(payload).encode() + b"\n")
            self._proc.stdin.flush()
            header = self._proc.stdout.read(8)
            if len(header) < 8:
                raise RuntimeError(f"the eSpeak helper process exited (code {self._proc.poll()}); see its stderr")
            status, size = struct.unpack("<ii", header)
            body = self._proc.stdout.read(size)
        if status == 1:
            raise ValueError(body.decode())
        if status != 0:
            raise RuntimeError(body.decode())
        return body

    def close(self) -> None:
        if self.pid == os.getpid() and self._proc.poll() is None:
            self._proc.stdin.close()  # EOF ends the helper's loop
            self._proc.wait(timeout=10)


_HELPER: _Helper | None = None
_HELPER_LOCK = threading.Lock()


def _helper() -> _Helper:
    global _HELPER
    with _HELPER_LOCK:
        if _HELPER is None or _HELPER.pid != os.getpid():
            _HELPER = _Helper()
            atexit.register(_HELPER.close)
        return _HELPER


def espeak_version() -> str:
    """Version string of the eSpeak NG library in use (recorded in the manifest)."""
    return _helper().info["version"]


# ----------------------------------------------------------------------------------------------- audio
def synthesise(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, sample_rate: int = 16000
) -> np.ndarray:
    """Read ``text`` aloud with eSpeak NG, without noise.

    Args:
        text: the words to say.
        voice: eSpeak voice name, optionally with a variant (``en-us``, ``en-gb-scotland+f2``).
        rate: speed in words per minute (80..450; eSpeak's default is 175).
        pitch: base pitch, 0..99 (50 is the voice's own).
        sample_rate: output rate in Hz; eSpeak's 22050 Hz is resampled with torchaudio.

    Returns:
        Mono waveform, float32 in [-1, 1), shape (num_samples,). The same arguments always give the same array.
    """
    if not text.strip():
        raise ValueError(f"text to synthesise is empty: {text!r}")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80..450 words per minute, got {rate}")
    if not 0 <= pitch <= 99:
        raise ValueError(f"pitch must be 0..99, got {pitch}")
    helper = _helper()
    raw = helper.request({"text": text, "voice": voice, "rate": int(rate), "pitch": int(pitch)})
    wave = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if helper.info["sample_rate"] != sample_rate:
        import torch
        import torchaudio

        with torch.no_grad():
            wave = torchaudio.functional.resample(
                torch.from_numpy(wave), helper.info["sample_rate"], sample_rate
            ).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` relative to the mean power of the whole clip, then clip to [-1, 1)."""
    power = float(np.mean(np.square(wave, dtype=np.float64))) if wave.size else 0.0
    sigma = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    noisy = wave + (sigma * rng.standard_normal(wave.shape)).astype(np.float32)
    return np.clip(noisy, -1.0, 32767 / 32768).astype(np.float32)


# ----------------------------------------------------------------------------------------------- corpus
@dataclass
class SpokenConfig:
    """What the embedded spoken corpus holds.

    Attributes:
        seed: every random choice (texts, voices, speeds, pitches, noise) derives from it.
        train_size, validation_size, test_size: utterances per split; all texts are distinct across the corpus.
        held_out_fraction: share of the test split read by ``held_out_voices`` (the rest by ``voices``).
        voices: eSpeak voices of all splits.
        variants: eSpeak variants (``m3``, ``f2``, ``Annie``, ``klatt2``, ...); when given, ``voices`` name accents only
            and every seen-voice utterance pairs an accent drawn from ``voices`` with a variant drawn from
            ``variants``: many more speakers for the same number of utterances.
        held_out_voices: unseen speakers, heard only in the test split: variants never heard in training, with a
            training accent (not enforced: any voice that no training utterance uses is accepted).
        accent_voices: voices whose accent no training voice has; they read every test sentence again, as the
            ``test_accents`` split (empty: no such split).
        rate_range: inclusive speed range in words per minute.
        pitch_range: inclusive eSpeak pitch range (0..99, 50 = the voice's own).
        snr_db_range: signal-to-noise ratio range of the added white noise, in dB.
        sample_rate: output sample rate in Hz.
        shard_size: utterances per tar shard.
    """

    seed: int = 0
    train_size: int = 4200
    validation_size: int = 300
    test_size: int = 500
    held_out_fraction: float = 0.5
    voices: tuple[str, ...] = (
        "en-us",
        "en-us+f2",
        "en-us+m3",
        "en+m1",
        "en+f3",
        "en-gb-x-rp+m2",
        "en-gb-scotland+m4",
        "en-gb-scotland+f4",
    )
    variants: tuple[str, ...] = ()
    held_out_voices: tuple[str, ...] = ("en-us+f5", "en-gb-x-rp+m5")
    accent_voices: tuple[str, ...] = ("en-gb-x-gbcwmd+f5", "en-us-nyc+m5")
    rate_range: tuple[int, int] = (140, 200)
    pitch_range: tuple[int, int] = (35, 65)
    snr_db_range: tuple[float, float] = (20.0, 35.0)
    sample_rate: int = 16000
    shard_size: int = 1000

    def __post_init__(self) -> None:
        self.voices, self.held_out_voices = tuple(self.voices), tuple(self.held_out_voices)
        self.variants, self.accent_voices = tuple(self.variants), tuple(self.accent_voices)
        for name in ("train_size", "validation_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.voices:
            raise ValueError("voices must name at least one eSpeak voice")
        if both := sorted(set(self.seen_voices()) & set(self.held_out_voices)):
            raise ValueError(f"held-out voices also seen: {both}")
        trained_accents = {v.split("+")[0] for v in self.seen_voices()}
        if shared := sorted(v for v in self.accent_voices if v.split("+")[0] in trained_accents):
            raise ValueError(f"accent voices {shared} have an accent that training voices have")
        if self.variants and any("+" in v for v in self.voices):
            raise ValueError(f"with variants, voices name accents only (no '+variant'), got {list(self.voices)}")
        if not 0.0 <= self.held_out_fraction <= 1.0 or (self.held_out_fraction > 0 and not self.held_out_voices):
            raise ValueError(f"held_out_fraction {self.held_out_fraction} needs 0..1 and held_out_voices when > 0")
        for name, lo, hi in (("rate_range", 80, 450), ("pitch_range", 0, 99), ("snr_db_range", -20, 100)):
            a, b = getattr(self, name)
            if not lo <= a <= b <= hi:
                raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {(a, b)}")
        if self.sample_rate <= 0 or self.shard_size <= 0:
            raise ValueError(f"sample_rate and shard_size must be positive, got {self.sample_rate}, {self.shard_size}")

    def seen_voices(self) -> tuple[str, ...]:
        """Every voice that may read a training, validation or seen-voice test utterance."""
        return tuple(f"{a}+{v}" for a in self.voices for v in self.variants) if self.variants else self.voices


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: everything needed to render it, and the fields of its ``.json`` record."""

    id: str
    split: str
    text: str
    voice: str
    rate: int
    pitch: int
    snr_db: float
    held_out_voice: bool
    noise_seed: tuple[int, int, int]


def plan_corpus(cfg: SpokenConfig) -> list[Utterance]:
    """Decide texts, voices, speeds, pitches and SNRs of every utterance (cheap: nothing is synthesised)."""
    rng = np.random.default_rng(cfg.seed)
    sizes = {"train": cfg.train_size, "validation": cfg.validation_size, "test": cfg.test_size}
    texts = iter(make_texts(rng, sum(sizes.values())))
    plan = []
    for split_index, split in enumerate(SPLITS[:3]):
        held_out = np.zeros(sizes[split], dtype=bool)
        if split == "test":
            held_out[rng.permutation(sizes[split])[: round(cfg.held_out_fraction * sizes[split])]] = True
        for i in range(sizes[split]):
            plan.append(
                Utterance(
                    id=f"{split}_{i:06d}",
                    split=split,
                    text=next(texts),
                    voice=_voice(rng, cfg, bool(held_out[i])),
                    rate=int(rng.integers(cfg.rate_range[0], cfg.rate_range[1] + 1)),
                    pitch=int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1)),
                    snr_db=round(float(rng.uniform(*cfg.snr_db_range)), 2),
                    held_out_voice=bool(held_out[i]),
                    noise_seed=(cfg.seed, split_index, i),
                )
            )
    return plan + _accent_plan(cfg, [u for u in plan if u.split == "test"])


def _accent_plan(cfg: SpokenConfig, test: list[Utterance]) -> list[Utterance]:
    """The ``test_accents`` split: each test sentence read again by an accent voice. Its own generator, so
    the other splits are the same with or without it."""
    if not cfg.accent_voices:
        return []
    rng = np.random.default_rng((cfg.seed, SPLITS.index("test_accents")))
    return [
        Utterance(
            id=f"test_accents_{i:06d}",
            split="test_accents",
            text=u.text,
            voice=_pick(rng, cfg.accent_voices),
            rate=int(rng.integers(cfg.rate_range[0], cfg.rate_range[1] + 1)),
            pitch=int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1)),
            snr_db=round(float(rng.uniform(*cfg.snr_db_range)), 2),
            held_out_voice=True,
            noise_seed=(cfg.seed, SPLITS.index("test_accents"), i),
        )
        for i, u in enumerate(test)
    ]


def _voice(rng: np.random.Generator, cfg: SpokenConfig, held_out: bool) -> str:
    if held_out:
        return _pick(rng, cfg.held_out_voices)
    if cfg.variants:  # accent and variant drawn independently
        return f"{_pick(rng, cfg.voices)}+{_pick(rng, cfg.variants)}"
    return _pick(rng, cfg.voices)


def _render(job: tuple[Utterance, int]) -> tuple[bytes, bytes, float]:
    """Synthesise, add noise and encode one utterance: (FLAC bytes, JSON bytes, duration in seconds)."""
    import soundfile as sf

    utt, sample_rate = job
    wave = synthesise(utt.text, utt.voice, utt.rate, utt.pitch, sample_rate)
    wave = add_noise(wave, utt.snr_db, np.random.default_rng(list(utt.noise_seed)))
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format="FLAC", subtype="PCM_16")
    duration = round(wave.shape[0] / sample_rate, 4)
    record = {k: v for k, v in asdict(utt).items() if k != "noise_seed"} | {"duration_s": duration}
    return buffer.getvalue(), json.dumps(record, sort_keys=True).encode(), duration


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # the pool already uses every core


def _rendered(plan: list[Utterance], sample_rate: int, workers: int) -> Iterator[tuple[bytes, bytes, float]]:
    jobs = [(utt, sample_rate) for utt in plan]
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # idle OpenMP threads spin after each resample and starve the eSpeak helper
        try:
            yield from map(_render, jobs)
        finally:
            torch.set_num_threads(threads)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may hold torch threads and an eSpeak helper of its own.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        yield from pool.map(_render, jobs, chunksize=8)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""  # fixed: byte-identical
    tar.addfile(info, io.BytesIO(data))


def write_spoken_corpus(
    out_dir: str | Path, cfg: SpokenConfig | None = None, *, workers: int | None = None, progress: bool = False
) -> dict:
    """Synthesise the corpus into WebDataset shards plus ``manifest.json``.

    Writes ``<out_dir>/<split>-<index:05d>.tar`` (samples ``<id>.flac``, 16-bit mono FLAC, and ``<id>.json`` with id,
    text, voice, rate, pitch, snr_db, duration_s, split, held_out_voice) and ``<out_dir>/manifest.json``. Older shards
    of the same splits in ``out_dir`` are removed first.

    Args:
        out_dir: destination directory (created if missing).
        cfg: corpus settings; defaults to ``SpokenConfig()`` (about 5,000 utterances).
        workers: processes synthesising in parallel, ``min(2, cpu_count)`` by default; the output does not depend on it.
        progress: show a progress bar.

    Returns:
        The manifest: seed, config, counts per split and per voice, hours, shard names with SHA-256, generator and
        eSpeak versions, generation time.
    """
    cfg = cfg or SpokenConfig()
    if missing := unknown_variants([*cfg.seen_voices(), *cfg.held_out_voices, *cfg.accent_voices]):
        raise ValueError(f"unknown eSpeak variant(s) {missing} (the files in espeak-ng-data/voices/!v name them)")
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(p for split in SPLITS for p in out.glob(f"{split}-*.tar")):
        logger.info("removing old shard %s", stale)
        stale.unlink()
    plan = plan_corpus(cfg)
    logger.info("synthesising %d utterances with %d worker(s) into %s", len(plan), workers, out)
    from tqdm.auto import tqdm

    shards, seconds, counters = [], Counter(), {split: Counter() for split in SPLITS}
    tar, shard_split, in_shard = None, None, 0
    rendered = tqdm(_rendered(plan, cfg.sample_rate, workers), total=len(plan), disable=not progress, unit="utt")
    for utt, (flac, record, duration) in zip(plan, rendered, strict=True):
        if tar is None or utt.split != shard_split or in_shard == cfg.shard_size:
            if tar is not None:
                tar.close()
            shard_split, in_shard = utt.split, 0
            name = f"{utt.split}-{sum(s['split'] == utt.split for s in shards):05d}.tar"
            shards.append({"name": name, "split": utt.split, "samples": 0})
            tar = tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT)
        _add_member(tar, f"{utt.id}.flac", flac)
        _add_member(tar, f"{utt.id}.json", record)
        in_shard += 1
        shards[-1]["samples"] += 1
        seconds[utt.split] += duration
        counters[utt.split][utt.voice] += 1
    if tar is not None:
        tar.close()
    for shard in shards:
        shard["sha256"] = hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest()
    write_shard_index(out, {shard["name"]: shard["samples"] for shard in shards})
    elapsed = time.perf_counter() - start
    manifest = {
        "generator": f"tasks.synthetic.spoken v{GENERATOR_VERSION}",
        "espeak_ng": espeak_version(),
        "seed": cfg.seed,
        "config": asdict(cfg),
        "counts": {split: sum(counters[split].values()) for split in SPLITS},
        "voices": {split: dict(sorted(counters[split].items())) for split in SPLITS},
        "held_out_voices": list(cfg.held_out_voices),
        "held_out_test_utterances": sum(u.held_out_voice for u in plan if u.split == "test"),
        "accent_voices": list(cfg.accent_voices),
        "hours": {split: round(seconds[split] / 3600, 4) for split in SPLITS},
        "total_hours": round(sum(seconds.values()) / 3600, 4),
        "shards": shards,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generation_seconds": round(elapsed, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %d utterances (%.2f h) in %.1f s", len(plan), manifest["total_hours"], elapsed)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasks.synthetic.spoken OUT_DIR [--seed S] [--train N] ...``: write the corpus, print the manifest."""
    parser = argparse.ArgumentParser(prog="python -m tasks.synthetic.spoken", description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    defaults = SpokenConfig()
    for flag, field in (("--seed", "seed"), ("--train", "train_size"), ("--validation", "validation_size")):
        parser.add_argument(flag, type=int, default=getattr(defaults, field), dest=field)
    parser.add_argument("--test", type=int, default=defaults.test_size, dest="test_size")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, dest="shard_size")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: min(2, cores))")
    args = vars(parser.parse_args(argv))
    out_dir, workers = args.pop("out_dir"), args.pop("workers")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = write_spoken_corpus(out_dir, SpokenConfig(**args), workers=workers, progress=True)
    print(json.dumps(manifest, indent=2))
    print(
        f"wrote {sum(manifest['counts'].values())} utterances, {manifest['total_hours']:.2f} h of audio, "
        f"in {manifest['generation_seconds']:.1f} s to {out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
elif __name__ == "__espeak_server__":
    _serve()
