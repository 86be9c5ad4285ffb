"""Tokenizers: a small built-in one for the embedded data sets, and Hugging Face ones from local folders.

The built-in tokenizer splits into characters or whitespace words, reserves the special tokens the
diffusion needs (pad, mask, eos, unk) at fixed low ids, and is saved as JSON next to every run, so
a checkpoint is always decodable. A Hugging Face tokenizer is only ever read from a local folder
(``local_files_only``, no remote code); its mask / EOS / EoT ids come from its vocabulary (LLaDA's
``<|mdm_mask|>``, ``<|endoftext|>``, ``<|eot_id|>``) or from explicit overrides.
"""

from __future__ import annotations

import json
import re
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
            ``hf`` reads a Hugging Face tokenizer from `path`; ``esm`` is ESM2's protein alphabet.
        path: local folder for ``hf``.
        mask_token, eos_token, eot_token: token strings to use for ``hf`` when the tokenizer does not
            declare them itself.
    """

    kind: Literal["char", "word", "hf", "esm"] = "char"
    path: str | None = None
    mask_token: str = "<|mdm_mask|>"
    eos_token: str | None = None
    eot_token: str | None = "<|eot_id|>"


class BuiltinTokenizer:
    """Character- or word-level tokenizer with the diffusion special tokens at ids 0-3.

    Extra special tokens (modality placeholders such as ``<image>``) follow at ids 4, 5, ...; they
    are matched as whole strings before the text is split, so ``<image>`` is one token even at
    character level.
    """

    def __init__(self, tokens: Iterable[str], level: Literal["char", "word"] = "char", specials: Iterable[str] = ()):
        if level not in ("char", "word"):
            raise ValueError(f"unknown tokenizer level '{level}' (use 'char' or 'word')")
        self.level = level
        self.extra_specials = [s for s in dict.fromkeys(specials) if s not in SPECIALS]
        vocab = list(SPECIALS) + self.extra_specials
        for tok in tokens:
            if tok not in vocab:
                vocab.append(tok)
        self.vocab = vocab
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.pad_id, self.mask_id, self.eos_id, self.unk_id = (self.ids[s] for s in SPECIALS)
        self.eot_id: int | None = None
        self.num_special = len(SPECIALS) + len(self.extra_specials)
        pattern = "|".join(re.escape(s) for s in sorted(self.extra_specials, key=len, reverse=True))
        self._special_re = re.compile(f"({pattern})") if pattern else None

    @classmethod
    def build(
        cls, texts: Iterable[str], level: Literal["char", "word"] = "char", specials: Iterable[str] = ()
    ) -> BuiltinTokenizer:
        """Vocabulary = every character (or word) of `texts` outside the special strings, sorted."""
        probe = cls([], level, specials)
        seen: set[str] = set()
        for text in texts:
            for piece in probe._pieces(text):
                if piece not in probe.extra_specials:
                    seen.update(probe.split(piece))
        return cls(sorted(seen), level, specials)

    def split(self, text: str) -> list[str]:
        return list(text) if self.level == "char" else text.split()

    def _pieces(self, text: str) -> list[str]:
        return [p for p in self._special_re.split(text) if p] if self._special_re else [text]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self._pieces(text):
            if piece in self.extra_specials:
                out.append(self.ids[piece])
            else:
                out += [self.ids.get(tok, self.unk_id) for tok in self.split(piece)]
        return out

    def unknown(self, text: str) -> list[str]:
        """The characters (or words) of `text` outside the vocabulary, each once, in order: `encode` maps
        them to ``<unk>``, which the model never saw in training."""
        pieces = [tok for piece in self._pieces(text) if piece not in self.extra_specials for tok in self.split(piece)]
        return list(dict.fromkeys(tok for tok in pieces if tok not in self.ids))

    def token_id(self, token: str) -> int:
        """Id of a special token string such as ``<image>``."""
        if token not in self.ids:
            raise KeyError(f"token '{token}' is not in the vocabulary")
        return self.ids[token]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        special = set(range(self.num_special)) if skip_special else set()
        toks = [self.vocab[i] for i in ids if i not in special and 0 <= i < len(self.vocab)]
        return ("" if self.level == "char" else " ").join(toks)

    def __len__(self) -> int:
        return len(self.vocab)

    def save(self, path: str | Path) -> None:
        data = {"type": "mmdiff-builtin", "level": self.level, "specials": self.extra_specials, "vocab": self.vocab}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> BuiltinTokenizer:
        data = json.loads(Path(path).read_text())
        if data.get("type") != "mmdiff-builtin" or list(data["vocab"][: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"{path} is not an mmdiff built-in tokenizer file")
        specials = data.get("specials", [])
        tok = cls(data["vocab"][len(SPECIALS) + len(specials) :], data["level"], specials)
        if tok.vocab != data["vocab"]:
            raise ValueError(f"{path}: vocabulary does not round-trip")
        return tok


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

    def add_specials(self, specials: Iterable[str]) -> None:
        """Register extra special tokens (modality placeholders); they get new ids at the end."""
        new = [s for s in specials if s not in self.tok.get_vocab()]
        if new:
            self.tok.add_special_tokens({"additional_special_tokens": new})

    def token_id(self, token: str) -> int:
        vocab = self.tok.get_vocab()
        if token not in vocab:
            raise KeyError(f"token '{token}' is not in the vocabulary")
        return int(vocab[token])

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def chat_encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Ids of `messages` rendered by the folder's chat template (or LLaDA-Instruct's), assistant header last."""
        from multimodal.chat import chat_prompt_ids

        return chat_prompt_ids(self, messages)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def __len__(self) -> int:
        return len(self.tok)

    def save(self, folder: str | Path) -> None:
        self.tok.save_pretrained(str(folder))


def build_tokenizer(
    config: TokenizerConfig, texts: Iterable[str] = (), specials: Iterable[str] = ()
) -> BuiltinTokenizer | HFTokenizer:
    """Create the tokenizer a run asks for; built-in ones learn their vocabulary from `texts`.

    `specials` are extra special tokens (modality placeholders) the task needs.
    """
    if config.kind == "esm":
        return ESMTokenizer()
    if config.kind == "hf":
        if not config.path:
            raise ValueError("tokenizer.kind 'hf' needs tokenizer.path (a local folder)")
        tok = HFTokenizer(config.path, config.mask_token, config.eos_token, config.eot_token)
        tok.add_specials(specials)
        return tok
    return BuiltinTokenizer.build(texts, config.kind, specials)


def load_tokenizer(path: str | Path) -> BuiltinTokenizer | HFTokenizer:
    """Load what `save` wrote: a built-in JSON file or a Hugging Face folder."""
    path = Path(path)
    if path.is_file():
        if json.loads(path.read_text()).get("type") == "mmdiff-esm":
            return ESMTokenizer()
        return BuiltinTokenizer.load(path)
    return HFTokenizer(path)


class ESMTokenizer:
    """ESM2's alphabet (fair-esm): residues are tokens; ``<cls>``, ``<eos>``, ``<pad>``, ``<mask>`` are specials.

    `encode` maps residue letters (and special strings written in the text) to ids without adding
    anything; protein tasks lay out ``<cls> sequence <eos>`` themselves.
    """

    SPECIAL_STRINGS = ("<cls>", "<eos>", "<pad>", "<mask>", "<unk>", "<null_1>")

    def __init__(self) -> None:
        import esm  # optional dependency (protein extra)

        self.alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
        a = self.alphabet
        self.mask_id, self.eos_id, self.pad_id, self.cls_id, self.unk_id = (
            a.mask_idx,
            a.eos_idx,
            a.padding_idx,
            a.cls_idx,
            a.unk_idx,
        )
        self.eot_id: int | None = None
        self.vocab = list(a.all_toks)
        self.ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.special_ids = {self.ids[s] for s in self.SPECIAL_STRINGS if s in self.ids}
        self._special_re = re.compile("(" + "|".join(re.escape(s) for s in self.SPECIAL_STRINGS) + ")")

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self._special_re.split(text):
            if piece in self.ids and piece.startswith("<"):
                out.append(self.ids[piece])
            else:
                out += [self.ids.get(c, self.unk_id) for c in piece.upper() if not c.isspace()]
        return out

    def token_id(self, token: str) -> int:
        if token not in self.ids:
            raise KeyError(f"token '{token}' is not in the ESM alphabet")
        return self.ids[token]

    def residue_ids(self) -> list[int]:
        """Ids of the 20 standard amino acids."""
        return [self.ids[c] for c in "ACDEFGHIKLMNPQRSTVWY"]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return "".join(
            self.vocab[i] for i in ids if 0 <= i < len(self.vocab) and not (skip_special and i in self.special_ids)
        )

    def __len__(self) -> int:
        return len(self.vocab)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "mmdiff-esm", "vocab": self.vocab}, indent=1))
