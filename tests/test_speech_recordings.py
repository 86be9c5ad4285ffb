"""The speech task's extra evaluation splits: ``real`` (recorded speech from two pinned Debian packages) and
``test_piper`` (test sentences read by Piper's Joe voice); offline, skipped where an asset is not fetched."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import wave
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from multimodal.assets import is_fetched
from tasks.asr_data import read_speech_shards
from tasks.real import speech_recordings
from tasks.real.speech_recordings import ALSA_SOUNDS, POCKETSPHINX_TESTDATA, write_real_split
from tasks.synthetic import spoken_piper
from tasks.synthetic.spoken import _add_member
from tasks.synthetic.spoken_piper import (
    JOE_VOICE,
    PATHVALIDATE,
    PIPER_TTS,
    PiperError,
    piper_wavs,
    run_checked,
    wavs_in_line_order,
    write_piper_split,
)

REAL = (POCKETSPHINX_TESTDATA, ALSA_SOUNDS)
PIPER = (PIPER_TTS, PATHVALIDATE, JOE_VOICE)


def _missing(assets) -> str:
    return "not fetched: mmdiff assets fetch " + " ".join(a.name for a in assets if not is_fetched(a))


@pytest.mark.skipif(not all(map(is_fetched, REAL)), reason=_missing(REAL))
def test_the_real_split_holds_every_recording_with_its_transcript(tmp_path):
    shard = write_real_split(tmp_path / "a")
    records, stats = read_speech_shards([shard], policy="fail")
    assert stats.kept == 20
    assert Counter(r["voice"] for r in records) == {"librivox": 5, "cards": 5, "goforward": 1, "tidigits": 1, "alsa": 8}
    texts = {r["id"]: r["text"] for r in records}
    assert texts["real_librivox_0880"] == "he was not an ill disposed young man"
    assert texts["real_cards_005"] == "eight of spades four of clubs seven of hearts"
    assert texts["real_goforward"] == "go forward ten meters"
    assert texts["real_tidigits_dhd_2934z"] == "two nine three four zero"
    assert texts["real_alsa_rear_left"] == "rear left"
    for record in records:
        audio, rate = sf.read(io.BytesIO(record["audio"]))
        assert rate == 16000 and audio.ndim == 1 and np.sqrt(np.mean(audio**2)) > 0.005
        assert record["duration_s"] == pytest.approx(len(audio) / 16000, abs=1e-4) and record["duration_s"] > 0.5
        assert record["split"] == "real" and record["held_out_voice"] is True
    assert write_real_split(tmp_path / "b").read_bytes() == shard.read_bytes()  # fixed headers, same audio


def test_an_unreadable_member_is_one_error_naming_it(monkeypatch):
    members = [*POCKETSPHINX_TESTDATA.members, *ALSA_SOUNDS.members]
    good = {m: _wav(np.zeros(1600)) if m.endswith(".wav") else b"\x00\x01" * 800 for m in members}
    good[speech_recordings.DATA + "librivox/transcription"] = "".join(
        f"<s> some words </s> ({name})\n" for name in speech_recordings.LIBRIVOX
    ).encode()
    good[speech_recordings.DATA + "cards/cards.transcription"] = b"<s> ten of clubs </s> (001)\n"
    monkeypatch.setattr(speech_recordings, "require", lambda *assets: None)
    monkeypatch.setattr(speech_recordings, "read_members", lambda asset, wanted: {m: good[m] for m in wanted})
    with pytest.raises(ValueError, match=r"cards/cards.transcription has no transcript for 002"):
        speech_recordings.recordings()
    broken = speech_recordings.DATA + "librivox/sense_and_sensibility_01_austen_64kb-0890.wav"
    good[broken] = b"RIFF not really"
    with pytest.raises(ValueError, match=broken + " is not readable audio"):
        speech_recordings.recordings()


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _tiny_corpus(folder, texts):
    """A ``test`` shard of the spoken corpus's format with placeholder audio (only ids, texts, snr_db are read)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    with tarfile.open(folder / "test-00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, text in enumerate(texts):
            rid = f"test_{i:06d}"
            flac = io.BytesIO()
            sf.write(flac, 0.1 * rng.standard_normal(8000).astype(np.float32), 16000, format="FLAC")
            record = {"id": rid, "text": text, "voice": "en-us", "snr_db": 20.0 + i, "split": "test"}
            _add_member(tar, f"{rid}.flac", flac.getvalue())
            _add_member(tar, f"{rid}.json", json.dumps(record).encode())
    return folder


@pytest.mark.skipif(not all(map(is_fetched, PIPER)), reason=_missing(PIPER))
def test_the_piper_split_reads_the_test_sentences_again(tmp_path, monkeypatch):
    texts = ["turn on the kitchen light", "three seven one", "the small dog saw a red ball near the river"]
    corpus = _tiny_corpus(tmp_path / "corpus", texts)
    manifest = json.loads(write_piper_split(corpus).read_text())
    assert manifest["count"] == 3 and manifest["voice"] == "en_US-joe-medium" and manifest["piper_tts"] == "1.8.0"
    assert manifest["hours"] > 0 and manifest["shards"] == [{"name": "test_piper-00000.tar", "samples": 3}]
    records, _ = read_speech_shards([corpus / "test_piper-00000.tar"], policy="fail")
    assert [(r["id"], r["text"]) for r in records] == [(f"test_{i:06d}", t) for i, t in enumerate(texts)]
    durations = []
    for i, record in enumerate(records):
        audio, rate = sf.read(io.BytesIO(record["audio"]))
        assert rate == 16000 and np.sqrt(np.mean(audio**2)) > 0.02  # speech, not silence
        assert record["voice"] == "piper:en_US-joe-medium" and record["held_out_voice"] is True
        assert record["split"] == "test_piper" and record["snr_db"] == 20.0 + i
        durations.append(record["duration_s"])
    assert durations[1] < durations[0] < durations[2]  # in line order: the shortest text is the shortest audio

    monkeypatch.setattr(spoken_piper, "piper_wavs", None)  # a second call must not synthesise
    assert write_piper_split(corpus) == corpus / "test_piper.json"
    monkeypatch.undo()
    again = _tiny_corpus(tmp_path / "again", texts)
    write_piper_split(again)
    assert (again / "test_piper-00000.tar").read_bytes() == (corpus / "test_piper-00000.tar").read_bytes()


def test_a_failing_piper_command_is_one_error_naming_it():
    failing = [sys.executable, "-c", "import sys; print('loading', file=sys.stderr); sys.exit('no voice here')"]
    with pytest.raises(PiperError, match=r"`python -m piper -m nowhere.onnx` failed with exit code 1: no voice here"):
        run_checked(failing, "python -m piper -m nowhere.onnx")


def test_piper_wavs_are_taken_in_clock_order_and_counted(tmp_path):
    for stamp in (9, 10, 100):
        with wave.open(str(tmp_path / f"{stamp}.wav"), "wb") as out:
            out.setnchannels(1), out.setsampwidth(2), out.setframerate(22050)
            out.writeframes(b"\x01\x00" * stamp)
    assert [p.name for p in wavs_in_line_order(tmp_path, 3)] == ["9.wav", "10.wav", "100.wav"]
    with pytest.raises(PiperError, match=r"wrote 3 WAV file\(s\) .* for 4 line\(s\)"):
        wavs_in_line_order(tmp_path, 4)
    with wave.open(str(tmp_path / "1000.wav"), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(22050)
    with pytest.raises(PiperError, match=r"empty WAV file\(s\) \['1000.wav'\]"):
        wavs_in_line_order(tmp_path, 4)


def test_a_text_for_piper_is_one_line():
    with pytest.raises(ValueError, match="one non-empty line"):
        with piper_wavs(["turn on the light", "two\nlines"]):
            pass
