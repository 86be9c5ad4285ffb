"""Real recorded speech with transcripts: the ``real`` split, a sanity set read from two pinned Debian packages.

Every other speech split is synthetic (eSpeak NG, Piper). This one holds human voices through real microphones,
so it shows whether a model trained on synthetic speech hears a person at all. It is a sanity set, not a
benchmark: 20 utterances, and most of their words are outside the embedded corpus vocabulary
(`tasks.synthetic.spoken.vocabulary`): 86 of the 117 words (Austen's prose, "clubs", "queen", "forward",
"meters", "left", "right", "center", "rear", "side", ...), so a model trained only on that corpus cannot spell
them and its word error rate here is high by construction. What it can get right are the in-vocabulary words:
the digits and "ten" (cards, goforward, tidigits), "front", and a few common words.

Sources, each read in place from the pinned ``.deb`` (never installed):

* ``pocketsphinx-testdata`` (BSD-2, Carnegie Mellon University; its copyright file covers every file),
  ``usr/share/pocketsphinx/test/data/``:

  - ``librivox/*.wav``: 5 sentences of Sense and Sensibility, chapter 1, from a LibriVox reading (LibriVox
    recordings are in the public domain); transcripts from ``librivox/transcription`` (``<s> words </s> (id)``),
    kept as written, disfluency ("a more a amiable") included. 16 kHz 16-bit mono WAV.
  - ``cards/00N.wav``: 5 utterances naming playing cards; transcripts from ``cards/cards.transcription``.
  - ``goforward.raw``: "go forward ten meters" (the public rule of ``goforward.gram``). Headerless: read as
    16-bit little-endian mono at 16 kHz. Little-endian because only that byte order gives a smooth signal
    (sample-to-sample differences 0.4 of the signal's RMS, against 1.2 byte-swapped); 16 kHz because the
    package's ``goforward.mfc`` holds 264 frames of 10 ms (2.6 s) for its 44,580 samples (2.8 s at 16 kHz,
    5.6 s at 8 kHz), and read at 16 kHz the speaker's median pitch is 125 Hz.
  - ``tidigits/dhd.2934z.raw``: "two nine three four zero" (TIDIGITS naming, ``z`` is "zero"; the decoder's
    own tests expect exactly this hypothesis for this file). Same format, established the same way:
    little-endian by smoothness (0.44 against 1.23); 16 kHz because those tests decode it with the default
    front end, whose rate is 16 kHz (the tidigits model's ``feat.params`` sets none), and because at 16 kHz the
    voice's median pitch is 131 Hz, like goforward's speaker, where at 8 kHz it would be an implausible 65 Hz.
    38,400 samples, 2.4 s.

  Left out: ``numbers.raw`` and ``something.raw`` (no transcript in the package) and the ``.mfc`` files
  (features, not audio).
* ``alsa-utils`` (GPL-2, per the package's copyright file), ``usr/share/sounds/alsa/``: 8 spoken channel names
  (``Front_Center.wav`` -> "front center"; ``Noise.wav`` is noise and is left out). 48 kHz 16-bit mono,
  resampled to 16 kHz with torchaudio.

Records are those of the spoken corpus (tasks/synthetic/spoken.py): ``<id>.flac`` (16-bit mono FLAC, 16 kHz)
and ``<id>.json`` with id, text, voice (the source: ``librivox``, ``cards``, ``goforward``, ``tidigits``,
``alsa``), duration_s, split ``real``, held_out_voice true and source (package, version and member). One shard,
written under a temporary name and renamed, byte-identical on every run (fixed tar headers). A member that
cannot be read is one error naming it; nothing is skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multimodal.assets import Asset, read_members, register_asset, require
from tasks.records import write_shard_index

SPLIT = "real"
SAMPLE_RATE = 16000

DATA = "usr/share/pocketsphinx/test/data/"
LIBRIVOX = tuple(f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890", "0920", "0930"))
CARDS = ("001", "002", "003", "004", "005")
# headerless recordings: member -> (id, voice, transcript); format and evidence in the module docstring
RAW = {
    DATA + "goforward.raw": ("real_goforward", "goforward", "go forward ten meters"),
    DATA + "tidigits/dhd.2934z.raw": ("real_tidigits_dhd_2934z", "tidigits", "two nine three four zero"),
}
ALSA = "usr/share/sounds/alsa/"
CHANNELS = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right", "Side_Left")
CHANNELS += ("Side_Right",)

POCKETSPHINX_TESTDATA = register_asset(
    Asset(
        name="pocketsphinx_testdata",
        source="debian",
        package="pocketsphinx-testdata",
        version="0.8+5prealpha+1-15",
        filename="pocketsphinx-testdata_0.8+5prealpha+1-15_all.deb",
        sha256="eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0",
        members=(
            DATA + "librivox/transcription",
            *(f"{DATA}librivox/{name}.wav" for name in LIBRIVOX),
            DATA + "cards/cards.transcription",
            *(f"{DATA}cards/{name}.wav" for name in CARDS),
            *RAW,
        ),
        licence="BSD-2 (Carnegie Mellon University); the LibriVox reading is public domain",
        what="recorded test utterances with transcripts: 5 LibriVox sentences, 5 card names, a command, 5 digits",
    )
)
ALSA_SOUNDS = register_asset(
    Asset(
        name="alsa_channel_sounds",
        source="debian",
        package="alsa-utils",
        version="1.2.8-1",
        filename="alsa-utils_1.2.8-1_amd64.deb",
        sha256="fb24eb1a318228b974efbef726190dd90c6106a208814a3ee8f5d69b91ee0ba4",
        members=tuple(f"{ALSA}{name}.wav" for name in CHANNELS),
        licence="GPL-2 (alsa-utils)",
        what="8 recorded channel names (front center, rear left, ...) of the speaker-test sounds, 48 kHz",
    )
)


@dataclass(frozen=True)
class Recording:
    """One utterance: its id, transcript, source (the record's ``voice``), member and 16 kHz int16 samples."""

    id: str
    text: str
    voice: str
    source: str
    samples: np.ndarray  # (num_samples,) int16 at SAMPLE_RATE


def _words(text: str) -> str:
    return " ".join(text.lower().split())


def transcripts(listing: bytes, member: str) -> dict[str, str]:
    """Id -> words of a ``<s> words </s> (id)`` transcription file (one utterance a line)."""
    out = {}
    for n, line in enumerate(listing.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        found = re.fullmatch(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^()\s]+)\)\s*", line)
        if found is None:
            raise ValueError(f"{member}:{n}: not a '<s> words </s> (id)' line: {line!r}")
        out[found.group(2)] = _words(found.group(1))
    return out


def _decode(data: bytes, member: str) -> np.ndarray:
    """A WAV member as 16 kHz int16 samples (resampled when recorded at another rate)."""
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{member} is not readable audio: {err}") from None
    if samples.shape[1] != 1:
        raise ValueError(f"{member} has {samples.shape[1]} channels; the recordings are mono")
    samples = samples[:, 0]
    if rate != SAMPLE_RATE:
        import torch
        import torchaudio

        with torch.no_grad():
            wave = torch.from_numpy(samples.astype(np.float32) / 32768.0)
            wave = torchaudio.functional.resample(wave, rate, SAMPLE_RATE).numpy()
        samples = np.round(np.clip(wave, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
    return samples


def _raw(data: bytes, member: str) -> np.ndarray:
    if len(data) % 2:
        raise ValueError(f"{member} has an odd number of bytes; 16-bit samples expected")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def recordings() -> list[Recording]:
    """Every utterance of the split, in a fixed order, read from the pinned packages (module docstring).

    Raises:
        AssetMissing: a package is not fetched (the message names the command).
        AssetError, ValueError: a member is missing or unreadable, or a transcript is missing (naming it).
    """
    require(POCKETSPHINX_TESTDATA, ALSA_SOUNDS)
    sphinx = read_members(POCKETSPHINX_TESTDATA, list(POCKETSPHINX_TESTDATA.members))
    alsa = read_members(ALSA_SOUNDS, list(ALSA_SOUNDS.members))
    where = {**dict.fromkeys(sphinx, POCKETSPHINX_TESTDATA), **dict.fromkeys(alsa, ALSA_SOUNDS)}
    out: list[Recording] = []

    def add(rid: str, text: str, voice: str, member: str, samples: np.ndarray) -> None:
        if samples.size == 0:
            raise ValueError(f"{member} holds no samples")
        asset = where[member]
        out.append(Recording(rid, text, voice, f"{asset.package} {asset.version}: {member}", samples))

    for folder, listing, names, voice in (
        ("librivox/", "librivox/transcription", LIBRIVOX, "librivox"),
        ("cards/", "cards/cards.transcription", CARDS, "cards"),
    ):
        texts = transcripts(sphinx[DATA + listing], DATA + listing)
        for name in names:
            member = f"{DATA}{folder}{name}.wav"
            if not texts.get(name):
                raise ValueError(f"{DATA + listing} has no transcript for {name} ({member})")
            add(f"real_{voice}_{name.rsplit('-', 1)[-1]}", texts[name], voice, member, _decode(sphinx[member], member))
    for member, (rid, voice, text) in RAW.items():
        add(rid, text, voice, member, _raw(sphinx[member], member))
    for name in CHANNELS:
        member = f"{ALSA}{name}.wav"
        add(f"real_alsa_{name.lower()}", _words(name.replace("_", " ")), "alsa", member, _decode(alsa[member], member))
    return out


def _flac(samples: np.ndarray) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def write_real_split(out_dir: str | Path) -> Path:
    """Write ``<out_dir>/real-00000.tar`` (atomically) and its entry in the shard index; return the shard.

    Raises:
        AssetMissing, AssetError, ValueError: as `recordings`.
    """
    from tasks.synthetic.spoken import _add_member

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{SPLIT}-00000.tar"
    rows = recordings()
    handle, partial = tempfile.mkstemp(dir=out, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file, tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for row in rows:
                record = {
                    "id": row.id,
                    "text": row.text,
                    "voice": row.voice,
                    "duration_s": round(row.samples.shape[0] / SAMPLE_RATE, 4),
                    "split": SPLIT,
                    "held_out_voice": True,
                    "source": row.source,
                }
                _add_member(tar, f"{row.id}.flac", _flac(row.samples))
                _add_member(tar, f"{row.id}.json", json.dumps(record, sort_keys=True).encode())
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the shard from other users
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    write_shard_index(out, {target.name: len(rows)})
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasks.real.speech_recordings OUT_DIR``: write the ``real`` split into OUT_DIR."""
    parser = argparse.ArgumentParser(prog="python -m tasks.real.speech_recordings", description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    shard = write_real_split(parser.parse_args(argv).out_dir)
    print(f"wrote {shard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
