"""LLaDA chat prompts: a local tokenizer's own template, and the built-in one that renders the same text."""

from __future__ import annotations

import pytest

from multimodal.chat import chat_prompt_ids, llada_chat_text

# The released LLaDA-8B-Instruct template's format, written as a Jinja template of our own: BOS once,
# each message as header + trimmed content + EoT, then the assistant header.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"]
SPECIALS += ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
WORDS = ["user", "assistant", "system", "hello", "world", "be", "brief", "hi", "[UNK]"]


def llada_tokenizer_folder(folder, template: str | None = TEMPLATE):
    """A tiny Hugging Face tokenizer with LLaDA's special tokens (and, optionally, its chat template)."""
    from tests.test_tokenizer import make_hf_folder

    return make_hf_folder(folder, SPECIALS + WORDS, bos_token="<|startoftext|>", chat_template=template)


MESSAGES = [
    {"role": "system", "content": " be brief "},
    {"role": "user", "content": "hello world\n"},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "hello"},
]


def test_the_built_in_template_renders_the_released_one(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llada_tokenizer_folder(tmp_path)), local_files_only=True)
    assert llada_chat_text(MESSAGES) == tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert llada_chat_text([{"role": "user", "content": "hi"}]) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize("template", [TEMPLATE, None], ids=["folder template", "built-in"])
def test_chat_prompt_ids_use_the_folder_template_or_the_built_in_one(tmp_path, template):
    from multimodal.tokenizer import HFTokenizer

    tok = HFTokenizer(llada_tokenizer_folder(tmp_path, template))
    ids = chat_prompt_ids(tok, MESSAGES)
    assert ids[0] == tok.token_id("<|startoftext|>") and ids.count(tok.eot_id) == 4
    assert ids[-2:] == [tok.token_id("assistant"), tok.token_id("<|end_header_id|>")]
    assert ids == tok.encode(llada_chat_text(MESSAGES))
