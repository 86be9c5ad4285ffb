"""Moonshine Base English (the pinned release, ONNX Runtime): the frozen tower's parity with a direct call,
its per-clip cache, bad audio, the tokenizer and the greedy recogniser on real recorded speech."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
soundfile = pytest.importorskip("soundfile")

from encoders import ModalityAdapter, create_encoder, create_projector  # noqa: E402
from encoders.moonshine import MOONSHINE_BASE_EN, WIDTH, output_frames, session  # noqa: E402
from multimodal.assets import is_fetched  # noqa: E402

pytestmark = pytest.mark.skipif(
    not is_fetched(MOONSHINE_BASE_EN), reason="asset moonshine_base_en not fetched (mmdiff assets fetch)"
)


def _clip(seconds: float, seed: int) -> torch.Tensor:
    """A voiced-like test signal: a few harmonics with vibrato and noise (the encoder takes any waveform)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 40 * seed + 10 * torch.sin(2 * torch.pi * 3 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / 16000
    wave = sum(torch.sin(k * phase) / k for k in range(1, 6)) * 0.1
    return (wave + 0.01 * torch.randn(t.shape, generator=g)).float()


def _batch(tower, clips):
    items = [tower.preprocess(c) for c in clips]
    longest = max(i.shape[-1] for i in items)
    return torch.stack([torch.nn.functional.pad(i, (0, longest - i.shape[-1])) for i in items]), items


def test_features_equal_a_direct_onnxruntime_call_whatever_the_batch():
    tower = create_encoder("moonshine_base", cache_features=False)
    clips = [_clip(1.3, 0), _clip(2.71, 1), _clip(0.45, 2)]
    batch, items = _batch(tower, clips)
    out = tower(batch)
    assert out.last.shape == (3, output_frames(batch.shape[-1]), WIDTH)
    for i, clip in enumerate(clips):
        direct = session("encoder_model.ort").run(None, {"input_values": clip.numpy()[None]})[0][0]
        n = int(out.lengths[i])
        assert n == direct.shape[0] == output_frames(clip.numel()) == tower.num_tokens(items[i]).real
        np.testing.assert_allclose(out.last[i, :n].numpy(), direct, rtol=0, atol=1e-6)
        assert out.last[i, n:].abs().sum() == 0  # padding frames stay zero
    # the reason clips are encoded alone: zero padding changes the graph's output
    padded = session("encoder_model.ort").run(None, {"input_values": batch[2, :1].numpy()})[0][0]
    assert np.abs(padded[: int(out.lengths[2])] - out.last[2, : int(out.lengths[2])].numpy()).max() > 1e-2


def test_each_clip_is_encoded_once(monkeypatch):
    tower = create_encoder("moonshine_base")
    clips = [_clip(1.0, 0), _clip(1.5, 1)]
    batch, _ = _batch(tower, clips)
    first = tower(batch)
    calls = []
    encode = tower.encode
    monkeypatch.setattr(tower, "encode", lambda wave: calls.append(wave.size) or encode(wave))
    again = tower(batch.flip(0))  # same clips, other order and other padding
    assert calls == []
    torch.testing.assert_close(again.last[1, : int(first.lengths[0])], first.last[0, : int(first.lengths[0])])
    tower(_batch(tower, [_clip(0.8, 3)])[0])
    assert len(calls) == 1 and len(tower.cache) == 3


def test_projected_tokens_match_the_counted_placeholders():
    tower = create_encoder("moonshine_base")
    adapter = ModalityAdapter(tower, create_projector("diffa_semantic", in_dim=WIDTH, out_dim=32))
    batch, items = _batch(tower, [_clip(1.2, 0), _clip(2.0, 1)])
    tokens, valid, _ = adapter(batch)
    assert tokens.shape[-1] == 32
    assert [int(v.sum()) for v in valid] == [adapter.num_tokens(i) for i in items]
    assert sum(p.numel() for p in tower.parameters()) == 0  # frozen by construction: nothing to train


def _wav(wave: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_bad_audio_is_one_error_naming_it(tmp_path):
    tower = create_encoder("moonshine_base", max_seconds=2.0)
    low = tmp_path / "phone_8k.wav"
    low.write_bytes(_wav(_clip(1.0, 0).numpy(), 8000))
    with pytest.raises(ValueError, match=r"8000 Hz \(.*phone_8k\.wav\)"):
        tower.preprocess(low)
    long = tmp_path / "lecture.wav"
    long.write_bytes(_wav(_clip(2.5, 0).numpy(), 16000))
    with pytest.raises(ValueError, match=r"too long .*lecture\.wav.*2\.5 s"):
        tower.preprocess(long)
    short = tmp_path / "click.wav"
    short.write_bytes(_wav(np.zeros(400, np.float32), 16000))
    with pytest.raises(ValueError, match=r"too short .*click\.wav"):
        tower.preprocess(short)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(_wav(np.zeros(0, np.float32), 16000))
    with pytest.raises(ValueError, match="empty.wav"):
        tower.preprocess(empty)
    with pytest.raises(ValueError, match=r"\(B, 2, samples\)"):
        tower(torch.zeros(1, 81, 100))


def test_tokenizer_reads_the_release_and_refuses_other_files(tmp_path):
    from encoders.moonshine import model_file
    from encoders.moonshine_recogniser import MoonshineTokenizer

    tok = MoonshineTokenizer(model_file("tokenizer.bin"))
    assert len(tok) == 32000
    the = tok.pieces.index("\u2581the".encode())
    a_byte = 3 + ord("!")  # byte-fallback piece of "!"
    assert tok.pieces[a_byte] == b"!"
    assert tok.decode([1, the, a_byte, 2]) == "the!"
    bad = tmp_path / "tokenizer.bin"
    bad.write_bytes(b"\x03abc\x09xy")
    with pytest.raises(ValueError, match="runs past the end"):
        MoonshineTokenizer(bad)


def test_recogniser_transcribes_real_recorded_speech():
    from tasks.asr_first_pass import transcript_style

    recordings = pytest.importorskip("tasks.real.speech_recordings")
    asset = recordings.POCKETSPHINX_TESTDATA
    if not is_fetched(asset):
        pytest.skip("asset pocketsphinx_testdata not fetched")
    from encoders.moonshine_recogniser import MoonshineRecogniser
    from multimodal.assets import read_member

    member = next(m for m in asset.members if m.endswith("cards/003.wav"))
    text = MoonshineRecogniser().transcribe(read_member(asset, member))
    assert transcript_style(text) == "seven of clubs"  # the recording's transcript


def test_a_bad_training_clip_is_named_before_the_first_step():
    from types import SimpleNamespace

    from multimodal.tokenizer import BuiltinTokenizer
    from multimodal.train.run import _lengths
    from multimodal.types import ModalityIO
    from tasks.base import Layout

    tower = create_encoder("moonshine_base")
    adapter = ModalityAdapter(tower, create_projector("diffa_semantic", in_dim=WIDTH, out_dim=32))
    io_ = ModalityIO("audio", 4, adapter.num_tokens, tower.preprocess)
    good = _wav(_clip(1.0, 0).numpy(), 16000)
    short = _wav(np.zeros(300, np.float32), 16000)
    layouts = [
        Layout(prompt="hi", answer="a b", meta={"id": f"train_{i}"}, media={"audio": [clip]})
        for i, clip in enumerate([good, short])
    ]
    run = SimpleNamespace(tokenizer=BuiltinTokenizer.build(["hi a b"], "word"))
    with pytest.raises(ValueError, match=r"training example train_1 \(audio\): audio too short"):
        _lengths(run, layouts, {"audio": io_})


def test_first_pass_names_the_utterance_with_bad_audio():
    from argparse import Namespace
    from types import SimpleNamespace

    from tasks.asr_first_pass import first_pass_command
    from tasks.base import Layout

    good, short = _wav(_clip(1.0, 0).numpy(), 16000), _wav(np.zeros(300, np.float32), 16000)
    layouts = [
        Layout(prompt="", answer="a", meta={"id": name}, media={"audio": [clip]})
        for name, clip in (("utt_ok", good), ("utt_click", short))
    ]
    task = SimpleNamespace(eval_layouts=lambda split: layouts)
    with pytest.raises(ValueError, match=r"utterance utt_click of split 'test': audio too short"):
        first_pass_command(Namespace(split="test", limit=None), SimpleNamespace(task=task))
