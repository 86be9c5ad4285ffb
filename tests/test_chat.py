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


def test_chat_and_sample_on_a_released_llada_folder(tmp_path, capsys):
    import torch

    from multimodal.backbone import backbone_preset, create_backbone
    from multimodal.backbone.convert import save_llada_checkpoint
    from multimodal.chat import chat_answer
    from multimodal.cli import main
    from multimodal.sampling import SamplerConfig
    from multimodal.sources import LLaDABackend

    torch.manual_seed(0)
    folder = tmp_path / "LLaDA-tiny-Instruct"
    save_llada_checkpoint(create_backbone(backbone_preset("llada_tiny", max_seq_len=128, init_std=0.2)), folder)
    llada_tokenizer_folder(folder)
    decoding = {"steps": 8, "gen_length": 16, "block_length": 8}
    overrides = [a for k, v in decoding.items() for a in ("--set", f"sampler.{k}={v}")]
    engine = LLaDABackend(folder, SamplerConfig(**decoding)).engine
    first = chat_answer(engine, [{"role": "user", "content": "hello"}])
    second = chat_answer(
        engine,
        [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "hi"},
        ],
    )
    assert main(["chat", "--llada", str(folder), "--prompt", "hello", "--prompt", "hi", *overrides]) == 0
    assert capsys.readouterr().out == f"user: hello\nassistant: {first}\nuser: hi\nassistant: {second}\n"
    assert main(["sample", "--llada", str(folder), "--prompt", "hello", *overrides]) == 0
    assert capsys.readouterr().out == f"hello -> {first}\n"
    raw = engine.texts(engine.generate([engine.tokenizer.encode("hello world")]))[0]
    assert main(["sample", "--llada", str(folder), "--raw", "--prompt", "hello world", *overrides]) == 0
    assert capsys.readouterr().out == f"hello world -> {raw}\n"
    assert main(["chat", "--llada", str(folder), "--set", "train.max_steps=3"]) == 2
    assert "chat takes only sampler.* overrides" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["audio_after_prompt", "audio_in_instruction"])
def test_asr_prompts_through_the_chat_template(tmp_path, layout):
    """Whisper-LLaDA: the chat-rendered instruction, then the audio after the assistant header;
    DIFFA: system line, the audio inside the user turn; the answer ends with EoT before EOS padding."""
    from multimodal.tokenizer import HFTokenizer
    from tasks.asr import ASRConfig, ASRTask
    from tests.test_asr import flac

    tok = HFTokenizer(llada_tokenizer_folder(tmp_path))
    tok.add_specials(["<audio>"])
    system = "be brief" if layout == "audio_in_instruction" else None
    task = ASRTask(ASRConfig(layout=layout, prompt="hello world", chat=True, system=system))
    lay = task.layout_for_prompt("", {"audio": flac()})
    ids = task.prompt_batch([lay], tok).prompts[0]
    if layout == "audio_after_prompt":
        assert ids == chat_prompt_ids(tok, [{"role": "user", "content": "hello world"}]) + [tok.token_id("<audio>")]
    else:
        user = "This is the audio: <audio>. hello world"
        assert ids == chat_prompt_ids(
            tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": user}]
        )
    plain = ASRTask(ASRConfig(layout=layout, prompt="hello world"))
    assert plain.prompt_batch([lay], tok).prompts[0] == tok.encode(plain.prompt_text())  # chat off: as before
    answered = type(lay)(prompt=lay.prompt, answer="hi", media=lay.media, prompt_suffix=lay.prompt_suffix)
    batch = task.collate([answered], tok)
    row = batch.input_ids[0][batch.maskable[0]].tolist()
    assert row[:3] == [tok.token_id("hi"), tok.eot_id, tok.eos_id]


def test_diffa_release_prompt_keeps_the_literal_audio_text_after_the_embeddings(tmp_path):
    """DIFFA's release: embeddings right after "This is the audio:", then the text " <audio>." as words."""
    from multimodal.tokenizer import HFTokenizer
    from tasks.asr import ASRConfig, ASRTask
    from tests.test_asr import flac
    from tests.test_tokenizer import make_hf_folder

    words = ["user", "assistant", "system", "This", "is", "the", "audio", ":", "<", ">.", "hello", "[UNK]"]
    tok = HFTokenizer(make_hf_folder(tmp_path, SPECIALS + words, bos_token="<|startoftext|>", chat_template=TEMPLATE))
    tok.add_specials(["<|audio_embeds|>"])
    config = ASRConfig(layout="audio_in_instruction", prompt="hello", chat=True, placeholder="<|audio_embeds|>")
    task = ASRTask(config)
    ids = task.prompt_batch([task.layout_for_prompt("", {"audio": flac()})], tok).prompts[0]
    user = ids[ids.index(tok.token_id("This")) : ids.index(tok.eot_id)]
    audio = tok.token_id("<|audio_embeds|>")
    spliced = user.index(audio)
    assert user[:spliced] == [tok.token_id(w) for w in ["This", "is", "the", "audio", ":"]]
    after = [t for t in user[spliced:] if t != audio]
    assert after == [tok.token_id(w) for w in ["<", "audio", ">.", "hello"]]  # word-level: ">." is one piece
    assert user[spliced : spliced + user.count(audio)] == [audio] * user.count(audio)
