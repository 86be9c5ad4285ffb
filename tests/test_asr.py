"""The ASR task: readers on broken records, speech towers and adapters, CTC, CLI transcription."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from encoders import create_encoder, create_projector
from encoders.audio_io import load_audio, log_mel
from tasks.asr_data import read_librispeech, read_manifest, read_speech_shards
from tasks.records import BadRecord
from tests.conftest import write_tar


def flac(seconds=0.5, rate=16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="FLAC")
    return buf.getvalue()


def test_librispeech_and_manifest_readers_count_broken_records(tmp_path):
    chapter = tmp_path / "ls" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198-0000.flac").write_bytes(flac())
    (chapter / "19-198-0001.flac").write_bytes(b"broken")
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 BROKEN ONE\n19-198-0002 NO FILE\n")
    records, stats = read_librispeech(tmp_path / "ls")
    assert [r["text"] for r in records] == ["hello world"]
    assert dict(stats.skipped) == {"corrupt audio": 1, "missing audio": 1}

    (tmp_path / "a.flac").write_bytes(flac())
    (tmp_path / "empty.wav").write_bytes(b"")
    lines = [
        {"audio": "a.flac", "text": "one two"},
        {"audio": "a.flac", "text": " "},
        "not json",
        {"audio": "empty.wav", "text": "x"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    records, stats = read_manifest(tmp_path / "m.jsonl")
    assert len(records) == 1 and dict(stats.skipped) == {
        "empty transcript": 1,
        "bad manifest line": 1,
        "corrupt audio": 1,
    }
    with pytest.raises(BadRecord, match="empty transcript"):
        read_manifest(tmp_path / "m.jsonl", policy="fail")


def test_speech_shards_with_text_or_json(tmp_path):
    path = tmp_path / "train-00000.tar"
    write_tar(
        path,
        [
            ("a.flac", flac()),
            ("a.json", json.dumps({"text": "hello there", "voice": "en"}).encode()),
            ("b.flac", flac()),
            ("b.txt", b"good morning"),
            ("c.json", json.dumps({"text": "no audio"}).encode()),
        ],
    )
    records, stats = read_speech_shards([path])
    assert [r["text"] for r in records] == ["hello there", "good morning"] and records[0]["voice"] == "en"
    assert dict(stats.skipped) == {"missing audio": 1}


def test_audio_loading_resamples_and_rejects_bad_input(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, np.zeros((4000, 2), np.float32), 8000, format="WAV")
    wave = load_audio(buf.getvalue())
    assert wave.shape == (8000,)  # stereo 8 kHz -> mono 16 kHz
    with pytest.raises(ValueError, match="corrupt or unsupported audio"):
        load_audio(b"garbage")
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "none.flac")
    with pytest.raises(ValueError, match="longer than the 30 s window"):
        log_mel(torch.zeros(16000 * 31), pad_seconds=30)
    whole = buf.getvalue()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])  # libsndfile alone would read the first half silently
    with pytest.raises(ValueError, match=r"truncated audio .*cut.wav.*declares 16000 bytes of samples, the file holds"):
        load_audio(cut)
    with pytest.raises(ValueError, match="truncated audio"):
        load_audio(whole[:60])


def test_whisper_features_and_encoder_match_transformers(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    ref = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
    torch.testing.assert_close(
        log_mel(torch.from_numpy(wave), 80, pad_seconds=30), torch.from_numpy(ref), atol=1e-4, rtol=1e-4
    )
    torch.manual_seed(0)
    cfg = WhisperConfig(
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    WhisperModel(cfg).save_pretrained(str(tmp_path))
    reference = WhisperModel.from_pretrained(str(tmp_path)).encoder.eval()
    tower = create_encoder("whisper", weights=str(tmp_path)).eval()
    x = tower.preprocess(torch.from_numpy(wave))
    assert x.shape == (81, 3000) and tower.num_tokens(x) == (50, 1500)  # real and padded encoder frames
    out = tower(x[None])
    expected = reference(x[None, :80], output_hidden_states=True).hidden_states
    assert len(out.hidden_states) == 3 and out.lengths.tolist() == [50]
    for a, b in zip(out.hidden_states, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "name,kwargs,expect",
    [
        ("diffa_semantic", {}, lambda frames: frames // 4),
        ("diffa_acoustic", {"layers": [1, 2, 3], "queries": 8, "intermediate_size": 64}, lambda frames: 8),
        ("diffa_dual", {"layers": [1, 3], "queries": 4, "prompt_vectors": 2}, lambda frames: 2 + 4 + frames // 4),
        (
            "window_qformer",
            {"window": 5, "queries": 2, "width": 32, "heads": 2, "intermediate_size": 64},
            lambda f: 2 * 20,
        ),
        ("sequence_linear", {"prompt_vectors": 3}, lambda frames: 3 + frames),
    ],
)
def test_speech_adapters_give_the_announced_token_counts(name, kwargs, expect):
    from encoders.base import ModalityAdapter

    tower = create_encoder("whisper_tiny")
    adapter = ModalityAdapter(tower, create_projector(name, 32, 48, **kwargs))
    clips = [tower.preprocess(torch.randn(n) * 0.1) for n in (16000, 8000)]
    tokens, valid, _ = adapter(torch.stack(clips))
    for i, clip in enumerate(clips):
        frames = tower.output_frames(int(clip[-1].sum()))  # real encoder frames
        assert int(valid[i].sum()) == adapter.num_tokens(clip) == expect(frames)
    assert tokens.shape[-1] == 48


def test_ctc_head_gives_an_auxiliary_loss():
    from multimodal.diffusion.ctc import ctc_auxiliary

    tower = create_encoder("conv_speech", width=32, layers=1, ctc_vocab=10)
    out = tower(torch.stack([tower.preprocess(torch.randn(8000) * 0.1)] * 2))
    extras = {"audio": {"ctc_logits": out.extras["ctc_logits"], "lengths": out.lengths, "rows": torch.tensor([0, 1])}}
    x0 = torch.tensor([[5, 6, 7, 2, 2], [8, 2, 2, 2, 2]])
    maskable = torch.tensor([[False, True, True, True, True], [True] * 5])
    loss = ctc_auxiliary(extras, x0, maskable, eos_id=2, blank_id=0)
    assert loss is not None and loss.item() > 0
    loss.backward()
    assert tower.ctc_head.weight.grad is not None


def test_ctc_greedy_merges_repeats_and_drops_blanks_in_real_frames():
    from tasks.asr_ctc import ctc_greedy

    best = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 3], [4, 0, 0, 4, 4, 3, 3, 3]])
    logits = torch.nn.functional.one_hot(best, 5).float()
    # a blank separates a repeated token; frames past each item's length are padding
    assert ctc_greedy(logits, torch.tensor([7, 8]), blank_id=0) == [[1, 1, 2], [4, 4, 3]]
    assert ctc_greedy(logits, torch.tensor([8, 1]), blank_id=0) == [[1, 1, 2, 3], [4]]


def test_cli_transcribes_one_file(tmp_path, capsys):
    from multimodal.cli import main

    spoken = (
        "{train_size: 24, validation_size: 4, test_size: 6, voices: [en-us, en-gb-x-rp], held_out_voices: [en-us+f2]}"
    )
    sets = [
        f"train.output_dir={tmp_path}",
        f"task.data_dir={tmp_path / 'data'}",
        f"task.spoken={spoken}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.threads=1",
        "train.log_every=1",
        "modalities.audio.encoder_args={width: 32, layers: 1, heads: 2, ctc_vocab: 256}",
    ]
    assert main(["train", "-c", "spoken_asr", *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert '"wer"' in out and '"wer/held_out_voice"' in out
    assert '"ctc_greedy/wer"' in out and '"ctc_greedy/wer/held_out_voice"' in out  # the tower's own CTC head
    preds = [
        json.loads(x) for x in (tmp_path / "spoken_asr" / "eval" / "test_predictions.jsonl").read_text().splitlines()
    ]
    assert "alignment" in preds[0] and "REF" in preds[0]["alignment"].upper() and "ctc_greedy" in preds[0]
    accents = (tmp_path / "spoken_asr" / "eval" / "test_accents_predictions.jsonl").read_text().splitlines()
    assert len(accents) == 6 and "test_accents:" in out  # spoken_asr evaluates train.eval_splits after training
    predictions = tmp_path / "spoken_asr" / "eval" / "test_predictions.jsonl"
    for flag in ([], ["--text-only"]):
        assert main(["deliberate", "--run", str(tmp_path / "spoken_asr"), "--hypotheses", str(predictions), *flag]) == 0
        report, *wrote = capsys.readouterr().out.split("\nwrote: ")
        report = json.loads(report)
        assert report["utterances"] == 6 and report["text_only"] == bool(flag) and "wer_after" in report
        name = "deliberation_low_confidence" + ("_text_only" if flag else "")
        assert [Path(w.strip()).name for w in wrote] == [f"{name}.jsonl", f"{name}_metrics.json"]
    again = ["deliberate", "--run", str(tmp_path / "spoken_asr"), "--hypotheses", str(predictions)]
    assert main(again) == 0  # the same command again: new files beside the first ones
    assert "deliberation_low_confidence-2.jsonl" in capsys.readouterr().out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["deliberate", "--run", str(tmp_path / "spoken_asr"), "--hypotheses", str(empty)]) == 2
    assert "holds no hypotheses" in capsys.readouterr().err
    clip = tmp_path / "clip.flac"
    clip.write_bytes(flac(1.0))
    assert main(["sample", "--run", str(tmp_path / "spoken_asr"), "--audio", str(clip), "--prompt", "x"]) == 0
    assert "x -> " in capsys.readouterr().out
    clip.write_bytes(flac(45.0))  # longer than the conv encoder's 41 s
    assert main(["sample", "--run", str(tmp_path / "spoken_asr"), "--audio", str(clip), "--prompt", "x"]) == 2
    assert "audio of 45.0 s is longer than the 41.0 s this encoder takes" in capsys.readouterr().err


def test_spec_augment_masks_inside_real_frames_in_training_only():
    from encoders.audio import conv_speech
    from encoders.spec_augment import SpecAugment

    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=8)
    features = torch.randn(3, 80, 100) + 5.0  # no real value is 0
    frames = torch.tensor([100, 60, 30])
    out = aug(features, frames, generator=torch.Generator().manual_seed(0))
    masked = out.eq(0)
    assert masked.any() and torch.equal(out[~masked], features[~masked])
    for i, n in enumerate(frames.tolist()):
        rows = masked[i, :, :n].all(1).sum().item()  # whole mel bands of the real frames
        cols = masked[i, :, :n].all(0).sum().item()  # whole time stretches
        assert rows <= 20 and cols <= min(16, 2 * int(0.2 * n))
        assert not masked[i, :, n:].any()  # padding is never masked
    enc = conv_speech(width=32, layers=1, heads=2, n_mels=80, spec_augment={})
    x = torch.cat([torch.randn(1, 80, 64), torch.ones(1, 1, 64)], 1)
    enc.eval()
    assert torch.equal(enc(x).hidden_states[-1], enc(x).hidden_states[-1])  # no masking at evaluation
    enc.train()
    torch.manual_seed(0)
    a = enc(x).hidden_states[0]
    torch.manual_seed(1)
    assert not torch.equal(a, enc(x).hidden_states[0])


def test_test_accents_split_exists_only_where_there_is_data_for_it():
    from tasks.asr import ASRConfig, ASRTask

    assert "test_accents" in ASRTask(ASRConfig()).splits  # the embedded corpus has it
    assert "test_accents" not in ASRTask(ASRConfig(spoken={"accent_voices": []})).splits
    assert ASRTask(ASRConfig(data="librispeech/dev-clean")).splits == ("train", "validation", "test")
    assert "test_accents" in ASRTask(ASRConfig(data="m.jsonl", files={"test_accents": "a.jsonl"})).splits


def test_wer_is_reported_for_each_held_out_voice():
    from tasks.asr import ASRConfig, ASRTask

    task = ASRTask(ASRConfig())
    examples = [
        {"id": "a", "text": "turn on", "voice": "en-us", "held_out_voice": False, "audio": "a.flac"},
        {"id": "b", "text": "the light", "voice": "en-us-nyc+m5", "held_out_voice": True, "audio": "b.flac"},
        {"id": "c", "text": "open door", "voice": "en-gb-x-gbcwmd+f5", "held_out_voice": True, "audio": "c.flac"},
    ]
    layouts = [task.layout(e) for e in examples]
    out = task.metrics(["turn on", "the light", "open window"], layouts)
    assert out["wer"] == 1 / 6 and out["wer/seen_voice"] == 0.0 and out["wer/held_out_voice"] == 1 / 4
    assert out["wer/held_out_voice/en-us-nyc+m5"] == 0.0 and out["wer/held_out_voice/en-gb-x-gbcwmd+f5"] == 0.5
    assert "wer/held_out_voice/en-us" not in out and out["n/held_out_voice/en-us-nyc+m5"] == 1


def test_cached_media_are_preprocessed_once_and_train_identically(tmp_path):
    from multimodal.train.config import load_experiment
    from multimodal.train.media_cache import CachedPreprocess
    from multimodal.train.run import train

    calls = []
    cached = CachedPreprocess(lambda item: calls.append(item) or torch.tensor([float(len(item))]))
    a, b = flac(0.2), flac(0.2)  # equal bytes, two objects: two entries
    assert torch.equal(cached(a), cached(a)) and len(calls) == 1
    cached(b)
    assert len(calls) == 2 and len(cached) == 2

    spoken = (
        "{train_size: 16, validation_size: 2, test_size: 2, voices: [en-us, en-gb-x-rp], held_out_voices: [en-us+f2]}"
    )
    curves = []
    for cache in ("false", "true"):
        sets = [
            f"train.output_dir={tmp_path / cache}",
            f"task.data_dir={tmp_path / 'data'}",
            f"task.spoken={spoken}",
            "train.max_steps=4",
            "train.batch_size=4",
            "train.threads=1",
            "train.log_every=1",
            "train.bucket_batches=2",
            "train.eval_at_end=false",
            f"train.cache_media={cache}",
            "modalities.audio.encoder_args={width: 32, layers: 1, heads: 2, ctc_vocab: 256, vtlp: {}}",
        ]
        run = train(load_experiment("spoken_asr", sets))
        lines = (run.folder / "metrics.jsonl").read_text().splitlines()
        curves.append([json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)])
    assert len(curves[0]) == 4
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]))


@pytest.mark.parametrize("samples", [16000, 16001, 8079, 159])
def test_whisper_real_frames_are_the_feature_extractors_attention_mask(samples):
    from transformers import WhisperFeatureExtractor

    wave = (np.random.default_rng(1).standard_normal(samples) * 0.1).astype(np.float32)
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    mask = extractor(wave, sampling_rate=16000, return_attention_mask=True, return_tensors="np")["attention_mask"]
    tower = create_encoder("whisper_tiny")  # a 2 s window
    assert int(tower.preprocess(torch.from_numpy(wave))[-1].sum()) == int(mask.sum()) == -(-samples // 160)


def test_a_task_placeholder_other_than_the_models_is_refused_before_training():
    import re

    from multimodal.train.build import build_run
    from multimodal.train.config import load_experiment

    message = "task.placeholder is '<|audio_embeds|>' but modalities.audio.placeholder is '<audio>'"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_run(load_experiment("spoken_asr", ["task.placeholder=<|audio_embeds|>"]))


def test_extra_splits_are_named_and_need_the_embedded_corpus():
    from tasks.asr import ASRConfig, ASRTask

    task = ASRTask(ASRConfig(extra_splits=["test_piper", "real"]))
    assert task.splits[-2:] == ("test_piper", "real")
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['test_librivox'\]"):
        ASRConfig(extra_splits=["test_librivox"])
    with pytest.raises(ValueError, match="embedded"):
        ASRConfig(data="data/librispeech", extra_splits=["real"])


def test_a_first_pass_is_written_as_the_corpus_writes_transcripts():
    from tasks.asr_first_pass import transcript_style

    assert transcript_style("Turn on the kitchen light.") == "turn on the kitchen light"
    assert transcript_style("9,923.") == "nine thousand nine hundred and twenty three"  # a number, in words
    assert transcript_style("Room 205") == "room two hundred and five"
    assert transcript_style("861-029") == "eight hundred and sixty one zero two nine"  # leading zero: a code
    assert transcript_style("Code 123456") == "code one two three four five six"
    assert transcript_style("He was ill-disposed,") == "he was ill disposed"
