"""Tokenizers: a small built-in one for the embedded data sets, and Hugging Face ones from local folders.

The built-in tokenizer splits into characters or whitespace words, reserves the special tokens the
diffusion needs (pad, mask, eos, unk) at fixed low ids, and is saved as JSON next to every run, so
a checkpoint is always decodable. A Hugging Face tokenizer is only ever read from a local folder
(``local_files_only``, no remote code); its mask / EOS / EoT ids come from its vocabulary (LLaDA's
``<|mdm_mask|>``, ``<|endoftext|>``, ``<|eot_id|>``) or from explicit overrides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SPECIALS = ("<pad>", "<mask>", "<eos>", "<unk>")


@dataclass
class TokenizerConfig:
    """How a run gets its tokenizer.

    Attributes:
        kind: ``char`` / ``word`` build the built-in tokenizer from the task's training texts;
            ``hf`` reads a Hugging Face tokenizer from `path`.
        path: local folder for ``hf``.
        mask_token, eos_token, eot_token: token strings to use for ``hf`` when the tokenizer does not
            declare them itself.
    """

    kind: Literal["char", "word", "hf"] = "char"
    path: str | None = None
    mask_token: str = "<|mdm_mask|>"
    eos_token: str | None = None
    eot_token: str | None = "<|eot_id|>"


class BuiltinTokenizer:
    """Character- or word-level tokenizer with the diffusion special tokens at ids 0-3."""

    def __init__(self, tokens: Iterable[str], level: Literal["char", "word"] = "char"):
        if level not in ("char", "word"):
            raise ValueError(f"unknown tokenizer level '{level}' (use 'char' or 'word')")
        self.level = level
        vocab = list(SPECIALS)
        for tok in tokens:
            if tok not in vocab:
                vocab.append(tok)
        self.vocab = vocab
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.pad_id, self.mask_id, self.eos_id, self.unk_id = (self.ids[s] for s in SPECIALS)
        self.eot_id: int | None = None

    @classmethod
    def build(cls, texts: Iterable[str], level: Literal["char", "word"] = "char") -> BuiltinTokenizer:
        """Vocabulary = every character (or word) of `texts`, sorted for determinism."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text if level == "char" else text.split())
        return cls(sorted(seen), level)

    def split(self, text: str) -> list[str]:
        return list(text) if self.level == "char" else text.split()

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(tok, self.unk_id) for tok in self.split(text)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        special = set(range(len(SPECIALS))) if skip_special else set()
        toks = [self.vocab[i] for i in ids if i not in special and 0 <= i < len(self.vocab)]
        return ("" if self.level == "char" else " ").join(toks)

    def __len__(self) -> int:
        return len(self.vocab)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"type": "mmdiff-builtin", "level": self.level, "vocab": self.vocab}, indent=1)
        )

    @classmethod
    def load(cls, path: str | Path) -> BuiltinTokenizer:
        data = json.loads(Path(path).read_text())
        if data.get("type") != "mmdiff-builtin" or list(data["vocab"][: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"{path} is not an mmdiff built-in tokenizer file")
        return cls(data["vocab"][len(SPECIALS) :], data["level"])


class HFTokenizer:
    """A Hugging Face tokenizer read from a local folder, with the ids the diffusion needs."""

    def __init__(
        self,
        folder: str | Path,
        mask_token: str = "<|mdm_mask|>",
        eos_token: str | None = None,
        eot_token: str | None = "<|eot_id|>",
    ):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {folder}")
        from transformers import AutoTokenizer  # heavy, optional

        self.folder = folder
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        vocab = self.tok.get_vocab()
        mask_id = self.tok.mask_token_id if self.tok.mask_token_id is not None else vocab.get(mask_token)
        if mask_id is None:
            raise ValueError(f"tokenizer at {folder} has no mask token ('{mask_token}'); set tokenizer.mask_token")
        eos_id = vocab.get(eos_token) if eos_token else self.tok.eos_token_id
        if eos_id is None:
            raise ValueError(f"tokenizer at {folder} has no EOS token; set tokenizer.eos_token")
        self.mask_id, self.eos_id = int(mask_id), int(eos_id)
        self.pad_id = int(self.tok.pad_token_id) if self.tok.pad_token_id is not None else self.eos_id
        self.eot_id = vocab.get(eot_token) if eot_token else None

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def __len__(self) -> int:
        return len(self.tok)

    def save(self, folder: str | Path) -> None:
        self.tok.save_pretrained(str(folder))


def build_tokenizer(config: TokenizerConfig, texts: Iterable[str] = ()) -> BuiltinTokenizer | HFTokenizer:
    """Create the tokenizer a run asks for; built-in ones learn their vocabulary from `texts`."""
    if config.kind == "hf":
        if not config.path:
            raise ValueError("tokenizer.kind 'hf' needs tokenizer.path (a local folder)")
        return HFTokenizer(config.path, config.mask_token, config.eos_token, config.eot_token)
    return BuiltinTokenizer.build(texts, config.kind)


def load_tokenizer(path: str | Path) -> BuiltinTokenizer | HFTokenizer:
    """Load what `save` wrote: a built-in JSON file or a Hugging Face folder."""
    path = Path(path)
    if path.is_file():
        return BuiltinTokenizer.load(path)
    return HFTokenizer(path)
