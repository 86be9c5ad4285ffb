"""The OpenAI request bodies the server accepts, its errors, and how answers become response objects.

Requests follow OpenAI's chat-completions, completions and audio-transcriptions APIs. Fields the
server does not use (``top_p``, ``presence_penalty``, ``user``, ...) are accepted and ignored, as
other OpenAI-compatible servers do; two extension fields (sent with the openai client's
``extra_body``) reach what a diffusion sampler has and an autoregressive one has not:

* ``sampler``: fields of the request's own sampler (``name``, ``steps``, ``threshold``, ...);
* ``denoising``: with ``stream``, also send the commits of every step (the live page draws them).

Errors are OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from multimodal.sources import RequestError, Turn


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: dict[str, Any] | None = None
    input_audio: dict[str, Any] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class Decoding(BaseModel):
    """Fields every generation request shares."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    sampler: dict[str, Any] | None = None
    denoising: bool = False

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop or [] if s]


class ChatRequest(Decoding):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def turns(self) -> list[Turn]:
        """The messages as turns, media decoded from data URLs / base64 (the server fetches nothing)."""
        out = []
        for i, m in enumerate(self.messages):
            role = "system" if m.role == "developer" else m.role
            if isinstance(m.content, str) or m.content is None:
                out.append(Turn(role, m.content or ""))
                continue
            turn = Turn(role)
            texts = []
            for part in m.content:
                where = f"messages[{i}].content"
                if part.type == "text":
                    texts.append(part.text or "")
                elif part.type == "image_url":
                    item = decode_data_url((part.image_url or {}).get("url", ""), where)
                    turn.media.setdefault("image", []).append(item)
                else:
                    item = decode_base64((part.input_audio or {}).get("data", ""), where)
                    turn.media.setdefault("audio", []).append(item)
            turn.text = "\n".join(texts)
            out.append(turn)
        return out


class CompletionRequest(Decoding):
    prompt: str | list[str]
    echo: bool = False

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def decode_data_url(url: str, param: str) -> bytes:
    """The bytes of a ``data:<type>;base64,<data>`` URL; other URLs are refused (nothing is downloaded)."""
    if not url.startswith("data:"):
        raise RequestError("image_url must be a data: URL (base64); the server downloads nothing", param)
    head, _, data = url.partition(",")
    if not head.endswith(";base64"):
        raise RequestError("image_url data URLs must be base64-encoded", param)
    return decode_base64(data, param)


def decode_base64(data: str, param: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("media are not valid base64", param) from None
    if not raw:
        raise RequestError("empty media", param)
    return raw


def error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
