"""Chat prompts for released LLaDA checkpoints: the tokenizer's own chat template, or the same one built in.

LLaDA-8B-Instruct's tokenizer ships a Jinja chat template: ``<|startoftext|>`` once, then per message
``<|start_header_id|>ROLE<|end_header_id|>\\n\\n`` + the content trimmed + ``<|eot_id|>``, and the
assistant header appended whether asked or not. A local folder's template is used when it has one
(transformers' `apply_chat_template`, no code from the folder is run); `llada_chat_text` renders the
identical text for folders without one. The answer ends at ``<|eot_id|>`` (EoT), which the engine
treats as a stop like EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LLADA_BOS = "<|startoftext|>"


def llada_chat_text(messages: Sequence[dict[str, str]], bos: str = LLADA_BOS) -> str:
    """The LLaDA-Instruct chat template rendered for `messages` (``role``, ``content``)."""
    parts = [bos]
    for m in messages:
        parts.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the chat prompt: the Hugging Face tokenizer's template if it has one, else LLaDA's."""
    hf = getattr(tokenizer, "tok", None)
    if hf is not None and getattr(hf, "chat_template", None):
        text = hf.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    else:
        bos = getattr(hf, "bos_token", None) if hf is not None else None
        text = llada_chat_text(messages, bos or LLADA_BOS)
    return tokenizer.encode(text)


def chat_answer(engine: Any, messages: Sequence[dict[str, str]], generator: Any = None) -> str:
    """The model's next assistant turn for `messages`: the chat prompt decoded with the engine's sampler,
    cut at the first EoT (or EOS), special tokens dropped."""
    out = engine.generate([chat_prompt_ids(engine.tokenizer, messages)], generator=generator)
    return engine.texts(out)[0]
