"""The embedded spoken corpus: eSpeak synthesis, disjoint splits, held-out voices, shards and manifest."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from tasks.synthetic.spoken import (
    SpokenConfig,
    make_texts,
    number_words,
    plan_corpus,
    synthesise,
    vocabulary,
    write_spoken_corpus,
)

TINY = SpokenConfig(seed=3, train_size=10, validation_size=4, test_size=8, shard_size=4)
RECORD_KEYS = {"id", "text", "voice", "rate", "pitch", "snr_db", "duration_s", "split", "held_out_voice"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("spoken")
    return out, write_spoken_corpus(out, TINY, workers=0)


def _records(out):
    records = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert all(m.mtime == 0 for m in members)
            files = {m.name: tar.extractfile(m).read() for m in members}
        for name in sorted(files):
            if name.endswith(".json"):
                records.append((json.loads(files[name]), files[name.replace(".json", ".flac")]))
    return records


def test_synthesis_is_audible_16khz_mono_float32_and_grows_with_text():
    short = synthesise("one", "en-us")
    long = synthesise("one two three four five six seven eight nine", "en-us")
    assert short.dtype == np.float32 and short.ndim == 1
    assert 0.01 < float(np.sqrt(np.mean(long**2))) and float(np.abs(long).max()) < 1.0
    assert 2 * short.shape[0] < long.shape[0]
    assert 2.0 < long.shape[0] / 16000 < 8.0  # nine digits at 175 words per minute, at 16 kHz


def test_voices_and_rates_change_the_audio_and_calls_repeat_exactly():
    text = "turn on the kitchen light"
    base = synthesise(text, "en-us", rate=175)
    assert np.array_equal(base, synthesise(text, "en-us", rate=175))
    female = synthesise(text, "en-us+f2", rate=175)
    assert base.shape != female.shape or not np.allclose(base, female)
    assert np.array_equal(female, synthesise(text, "en-us+f2", rate=175))  # breathy variant: seeded noise
    assert synthesise(text, "en-us", rate=300).shape[0] < 0.8 * base.shape[0]


def test_bad_synthesis_arguments_are_named():
    with pytest.raises(ValueError, match="unknown eSpeak voice 'en-xx'"):
        synthesise("hello", "en-xx")
    with pytest.raises(ValueError, match="rate must be 80..450 words per minute, got 20"):
        synthesise("hello", rate=20)
    with pytest.raises(ValueError, match="empty"):
        synthesise("  ")


def test_texts_are_lower_case_words_from_a_modest_vocabulary():
    texts = make_texts(np.random.default_rng(0), 2000)
    assert len(set(texts)) == 2000
    vocab = set(vocabulary())
    assert len(vocab) < 400
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", t) for t in texts)
    assert {w for t in texts for w in t.split()} <= vocab
    assert make_texts(np.random.default_rng(0), 50) == texts[:50]


def test_number_words():
    cases = {0: "zero", 13: "thirteen", 40: "forty", 205: "two hundred and five", 1000: "one thousand"}
    cases |= {1005: "one thousand and five", 2345: "two thousand three hundred and forty five"}
    assert {n: number_words(n) for n in cases} == cases
    with pytest.raises(ValueError, match="got 10000"):
        number_words(10000)


def test_default_plan_has_disjoint_splits_and_test_only_held_out_voices():
    cfg = SpokenConfig()
    full = plan_corpus(cfg)
    plan = [u for u in full if u.split != "test_accents"]
    assert len(plan) == cfg.train_size + cfg.validation_size + cfg.test_size
    texts = {split: {u.text for u in plan if u.split == split} for split in ("train", "validation", "test")}
    assert sum(map(len, texts.values())) == len(plan)  # every text once: splits are disjoint
    held_out = [u for u in plan if u.held_out_voice]
    assert {u.split for u in held_out} == {"test"}
    assert len(held_out) == round(cfg.held_out_fraction * cfg.test_size)
    assert {u.voice for u in held_out} == set(cfg.held_out_voices)
    assert all((u.voice in cfg.held_out_voices) == u.held_out_voice for u in plan)
    # unseen speakers: variants no training voice has, with training accents
    trained = {u.voice for u in plan if u.split == "train"}
    assert {v.split("+")[1] for v in cfg.held_out_voices}.isdisjoint(v.partition("+")[2] for v in trained)
    assert {v.split("+")[0] for v in cfg.held_out_voices} <= {v.split("+")[0] for v in trained}
    assert plan_corpus(cfg) == full
    assert [u.text for u in plan_corpus(replace(cfg, seed=1))] != [u.text for u in full]


def test_accent_split_reads_the_test_sentences_with_untrained_accents_and_leaves_other_splits_alone():
    cfg = SpokenConfig(train_size=40, validation_size=4, test_size=10)
    plan = plan_corpus(cfg)
    test = [u for u in plan if u.split == "test"]
    accents = [u for u in plan if u.split == "test_accents"]
    assert [u.text for u in accents] == [u.text for u in test]  # paired with the test split, sentence by sentence
    assert {u.voice for u in accents} == set(cfg.accent_voices) and all(u.held_out_voice for u in accents)
    trained_accents = {u.voice.split("+")[0] for u in plan if u.split == "train"}
    assert not {u.voice.split("+")[0] for u in accents} & trained_accents
    assert len({u.noise_seed for u in plan}) == len(plan)
    assert [u for u in plan if u.split != "test_accents"] == plan_corpus(replace(cfg, accent_voices=()))


def test_variants_pair_accents_with_variants_for_seen_voices_only():
    cfg = SpokenConfig(voices=("en-us", "en-gb-scotland"), variants=("m3", "f2", "Annie"))
    plan = plan_corpus(cfg)
    seen = [u for u in plan if not u.held_out_voice]
    assert {u.voice for u in seen} == {f"{a}+{v}" for a in cfg.voices for v in cfg.variants}  # every pairing occurs
    assert {u.voice for u in plan if u.split == "test" and u.held_out_voice} == set(cfg.held_out_voices)
    assert synthesise("two", seen[0].voice).size > 0  # eSpeak knows the combined name


def test_a_misspelt_variant_is_refused_before_anything_is_written(tmp_path):
    # eSpeak itself would read "en+Anie" with the plain "en" voice, without a word
    cfg = SpokenConfig(voices=("en",), variants=("m3", "Anie"), train_size=2, validation_size=1, test_size=2)
    with pytest.raises(ValueError, match=r"unknown eSpeak variant\(s\) \['Anie'\]"):
        write_spoken_corpus(tmp_path / "corpus", cfg, workers=0)
    assert not (tmp_path / "corpus").exists()


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="held-out voices also seen: \\['en-us'\\]"):
        SpokenConfig(held_out_voices=("en-us",))
    with pytest.raises(ValueError, match="held-out voices also seen: \\['en\\+f5'\\]"):
        SpokenConfig(voices=("en", "en-us"), variants=("m3", "f5"), held_out_voices=("en+f5",))
    with pytest.raises(ValueError, match=r"accent voices \['en-us\+m1'\] have an accent that training voices have"):
        SpokenConfig(accent_voices=("en-us+m1", "en-us-nyc"))
    with pytest.raises(ValueError, match="voices name accents only"):
        SpokenConfig(voices=("en+m1",), variants=("m3",))
    with pytest.raises(ValueError, match="rate_range"):
        SpokenConfig(rate_range=(200, 100))
    with pytest.raises(ValueError, match="test_size must be >= 0, got -1"):
        SpokenConfig(test_size=-1)


def test_shards_records_and_manifest(corpus):
    out, manifest = corpus
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == ["test-00000.tar", "test-00001.tar", "test_accents-00000.tar", "test_accents-00001.tar"] + [
        "train-00000.tar",
        "train-00001.tar",
        "train-00002.tar",
        "validation-00000.tar",
    ]
    records = _records(out)
    assert len(records) == 30
    for record, flac in records:
        assert set(record) == RECORD_KEYS
        wave, rate = sf.read(io.BytesIO(flac), dtype="float32")
        assert rate == 16000 and wave.ndim == 1
        assert wave.shape[0] / 16000 == pytest.approx(record["duration_s"], abs=1e-3)
        unseen = TINY.accent_voices if record["split"] == "test_accents" else TINY.held_out_voices
        assert record["held_out_voice"] == (record["voice"] in unseen)
        assert record["split"].startswith("test") or not record["held_out_voice"]
    by_split = {s: [r for r, _ in records if r["split"] == s] for s in ("train", "validation", "test", "test_accents")}
    counts = {"train": 10, "validation": 4, "test": 8, "test_accents": 8}
    assert manifest["counts"] == {s: len(rs) for s, rs in by_split.items()} == counts
    for split, rows in by_split.items():
        assert sum(manifest["voices"][split].values()) == len(rows)
        assert set(manifest["voices"][split]) == {r["voice"] for r in rows}
    assert manifest["held_out_test_utterances"] == 4 == sum(r["held_out_voice"] for r in by_split["test"])
    assert manifest["accent_voices"] == list(TINY.accent_voices)
    assert manifest["seed"] == 3 and manifest["total_hours"] > 0
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    assert json.loads((out / "manifest.json").read_text())["counts"] == manifest["counts"]


def test_shards_read_with_webdataset(corpus):
    wds = pytest.importorskip("webdataset")
    out, _ = corpus
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 30
    sample = samples[0]
    assert {"__key__", "flac", "json"} <= set(sample)
    assert json.loads(sample["json"])["id"] == sample["__key__"]
    assert sf.info(io.BytesIO(sample["flac"])).channels == 1


def test_same_seed_gives_byte_identical_shards_in_parallel_too(corpus, tmp_path):
    out, manifest = corpus
    again = write_spoken_corpus(tmp_path, TINY, workers=2)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
