"""Moonshine Base English as a first-pass recogniser: the released encoder-decoder, greedy, with its KV cache.

Whisper-LLaDA deliberates over a real autoregressive recogniser's hypotheses. This module is that
recogniser: the pinned release's encoder (encoders/moonshine.py) and merged decoder
(``decoder_model_merged.ort``), run by ONNX Runtime. The merged decoder holds two branches: without a
cache (``use_cache_branch`` false) it reads the whole prefix and returns every layer's self-attention
keys / values and the cross-attention keys / values of the encoder output; with it, one new token and the
cached tensors. Decoding is greedy from BOS (1) until EOS (2), over the 32,000 tokens of the tokenizer
(the logits are padded to 32,768; the padding ids are never chosen), for at most ``ceil(6.5 x seconds)``
tokens (the bound transformers' Moonshine documentation uses), so a decoder stuck in a loop stops.

``tokenizer.bin`` is a list of length-prefixed byte strings, one per id: ``<unk>``, ``<s>``, ``</s>``,
the 256 byte-fallback pieces (ids 3-258, each stored as the byte itself), then SentencePiece pieces with
``\u2581`` for a word boundary. `MoonshineTokenizer.decode` joins the bytes of the ids (special ids
left out), reads them as UTF-8 and turns the boundaries into spaces, as SentencePiece does.

Clips are decoded one at a time: the graph takes no padding mask (encoders/moonshine.py), so a padded
batch would change the features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from encoders.moonshine import ClipCheck, model_file, read_clip, session

BOS, EOS = 1, 2
TOKENS_PER_SECOND = 6.5


class MoonshineTokenizer:
    """The release's ``tokenizer.bin``: ids -> text."""

    def __init__(self, path: str | Path):
        data, pieces, at = Path(path).read_bytes(), [], 0
        while at < len(data):
            size = data[at]
            if at + 1 + size > len(data):
                raise ValueError(f"{path}: piece {len(pieces)} runs past the end of the file")
            pieces.append(data[at + 1 : at + 1 + size])
            at += 1 + size
        if pieces[:3] != [b"<unk>", b"<s>", b"</s>"]:
            raise ValueError(f"{path} is not a Moonshine tokenizer file (its first pieces are {pieces[:3]})")
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids: Sequence[int]) -> str:
        out = b"".join(self.pieces[i] for i in ids if EOS < i < len(self.pieces))
        return out.decode("utf-8", errors="replace").replace("\u2581", " ").strip()


class MoonshineRecogniser:
    """Greedy Moonshine Base English transcription of 16 kHz clips (module docstring)."""

    def __init__(self, threads: int | None = None, max_seconds: float = 30.0):
        self.encoder = session("encoder_model.ort", threads)
        self.decoder = session("decoder_model_merged.ort", threads)
        self.tokenizer = MoonshineTokenizer(model_file("tokenizer.bin"))
        self.check = ClipCheck(max_seconds)
        self._past = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self._present = [o.name for o in self.decoder.get_outputs()][1:]
        self._heads, self._head_dim = self.decoder.get_inputs()[2].shape[1], self.decoder.get_inputs()[2].shape[3]

    def token_ids(self, wave: np.ndarray) -> list[int]:
        """One clip (n,) float32 at 16 kHz -> the greedy token ids (without BOS / EOS)."""
        hidden = self.encoder.run(None, {"input_values": wave[None]})[0]
        empty = np.zeros((1, self._heads, 0, self._head_dim), np.float32)
        past = {name: empty for name in self._past}
        ids, limit = [BOS], math.ceil(TOKENS_PER_SECOND * wave.size / 16000)
        for step in range(limit):
            feeds = {
                "input_ids": np.array([[ids[-1]]], np.int64),
                "encoder_hidden_states": hidden,
                "use_cache_branch": np.array([step > 0]),
                **past,
            }
            logits, *present = self.decoder.run(None, feeds)
            token = int(logits[0, -1, : len(self.tokenizer)].argmax())
            for name, value in zip(self._present, present, strict=True):
                # the encoder's keys / values are computed once, on the first step
                if step == 0 or ".decoder." in name:
                    past[name.replace("present.", "past_key_values.")] = value
            if token == EOS:
                break
            ids.append(token)
        return ids[1:]

    def transcribe(self, clip: object) -> str:
        """A path, encoded bytes or a 16 kHz waveform tensor -> text (bad audio: one error naming it)."""
        wave = read_clip(clip, self.check).numpy().astype(np.float32, copy=False)
        return self.tokenizer.decode(self.token_ids(np.ascontiguousarray(wave)))
