"""Built-in tokenizers and Hugging Face tokenizers read from a local folder."""

from __future__ import annotations

import pytest

from multimodal.tokenizer import (
    SPECIALS,
    BuiltinTokenizer,
    HFTokenizer,
    TokenizerConfig,
    build_tokenizer,
    load_tokenizer,
)


@pytest.mark.parametrize("level,text", [("char", "ab=ba"), ("word", "the cat sat")])
def test_builtin_round_trip_and_save(tmp_path, level, text):
    tok = BuiltinTokenizer.build([text, "zzz"], level)
    assert tok.vocab[: len(SPECIALS)] == list(SPECIALS)
    assert (tok.pad_id, tok.mask_id, tok.eos_id) == (0, 1, 2)
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.vocab == tok.vocab and again.level == level


def test_unknown_characters_map_to_unk_and_specials_are_skipped():
    tok = BuiltinTokenizer.build(["abc"], "char")
    assert tok.encode("aXb") == [tok.ids["a"], tok.unk_id, tok.ids["b"]]
    assert tok.decode([tok.ids["a"], tok.eos_id, tok.mask_id, tok.ids["c"]]) == "ac"


def test_not_a_tokenizer_file(tmp_path):
    (tmp_path / "x.json").write_text('{"type": "other"}')
    with pytest.raises(ValueError, match="not an mmdiff built-in tokenizer"):
        BuiltinTokenizer.load(tmp_path / "x.json")


def make_hf_folder(folder, tokens=("<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>", "hello", "world", "[UNK]"), **extra):
    """A word-level Hugging Face tokenizer saved to `folder`: `tokens` in id order, ``<|...|>`` ones special;
    `extra` are tokenizer fields (``bos_token``, ``chat_template``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tokens)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    template = extra.pop("chat_template", None)
    specials = [t for t in tokens if t.startswith("<|") and t not in (extra.get("bos_token"), "<|endoftext|>")]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", unk_token="[UNK]", additional_special_tokens=specials, **extra
    )
    if template is not None:
        fast.chat_template = template
    fast.save_pretrained(str(folder))
    return folder


def test_hf_tokenizer_from_a_local_folder(tmp_path):
    make_hf_folder(tmp_path)
    tok = build_tokenizer(TokenizerConfig(kind="hf", path=str(tmp_path)))
    assert isinstance(tok, HFTokenizer)
    assert (tok.mask_id, tok.eos_id, tok.eot_id, tok.pad_id) == (1, 0, 2, 0)
    assert tok.encode("hello world") == [3, 4]
    assert tok.decode([3, 1, 4]) == "hello world"


def test_hf_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        HFTokenizer(tmp_path / "missing")
    make_hf_folder(tmp_path)
    with pytest.raises(ValueError, match="no mask token"):
        HFTokenizer(tmp_path, mask_token="<nope>")
    with pytest.raises(ValueError, match="needs tokenizer.path"):
        build_tokenizer(TokenizerConfig(kind="hf"))


def test_placeholder_specials_are_single_tokens(tmp_path):
    tok = BuiltinTokenizer.build(["<image>\nwhat colour?", "red"], "char", specials=["<image>"])
    assert tok.token_id("<image>") == 4 and "<" not in tok.vocab
    ids = tok.encode("<image>\nwhat")
    assert ids[0] == 4 and len(ids) == 6
    assert tok.decode(ids) == "\nwhat"
    tok.save(tmp_path / "t.json")
    again = BuiltinTokenizer.load(tmp_path / "t.json")
    assert again.vocab == tok.vocab and again.encode("<image>red") == tok.encode("<image>red")
    word = BuiltinTokenizer.build(["<audio> turn on the light"], "word", specials=["<audio>"])
    assert word.encode("<audio> turn on") == [4, word.ids["turn"], word.ids["on"]]
