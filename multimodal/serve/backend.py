"""What the server serves: a model with its tokenizer, and how a request becomes a prompt.

* `RunBackend` (``mmdiff serve --run DIR``): one of our runs. Its task lays a request out the way it
  lays out a typed prompt (`Task.layout_for_prompt`): the last user turn's text with its image or
  audio, earlier turns as history, so a served run answers exactly as `mmdiff sample` does. Default
  decoding: the run's sampler config.
* `LLaDABackend` (``mmdiff serve --llada DIR``): a released LLaDA folder (config.json, safetensors,
  tokenizer). Chat goes through the tokenizer's own chat template (multimodal/chat.py), completions
  are the text as given. A LLaDA-V folder also takes images: its ``llava_llada`` conversation
  (multimodal/llada_v.py), with the release's suppressed tokens added to the sampler's forbid_ids.
  Default decoding: LLaDA's reference settings (low-confidence remasking, 128 tokens in blocks of 32,
  one token per step) unless the command overrides them.

`request_sampler` turns a request's settings into its own sampler: ``max_tokens`` becomes the answer
canvas (rounded up to whole blocks; the text is cut at ``max_tokens``), ``temperature`` the Gumbel
temperature, and the extension field ``sampler`` any other field of a registered policy (``name``,
``steps``, ``threshold``, ``stop_at_eos``, ...). What every request of one batch shares (block length,
cache, attention, guidance, compile mode) is the server's and cannot be set per request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from multimodal.config import ConfigError, from_dict
from multimodal.sampling import Sampler, SamplerConfig, SamplerError, create_sampler, sampler_config_class
from multimodal.sampling.engine import Engine
from multimodal.types import PromptBatch

SHARED_FIELDS = ("block_length", "cache", "attention", "cfg_scale", "compile", "refresh_every")
LLADA_DEFAULT = SamplerConfig(steps=128, gen_length=128, block_length=32)


class RequestError(ValueError):
    """A request the backend cannot serve (HTTP 400), with the request field it concerns."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Turn:
    """One chat message: role, text, and media as bytes (images, audio clips)."""

    role: str
    text: str = ""
    images: list[bytes] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)


class Backend:
    """Base: the engine, the model id clients name, and what the model takes besides text."""

    model_id: str
    engine: Engine
    accepts: tuple[str, ...] = ()

    def chat(self, turns: list[Turn]) -> PromptBatch:
        raise NotImplementedError

    def completion(self, text: str) -> PromptBatch:
        raise NotImplementedError

    def transcription(self, audio: bytes, prompt: str | None) -> PromptBatch:
        raise RequestError(f"model '{self.model_id}' does not transcribe audio", "file")

    def token_text(self, token_id: int) -> str:
        """A token as the live page shows it (special tokens included)."""
        tok = self.engine.tokenizer
        try:
            return tok.decode([token_id], skip_special=False)
        except TypeError:  # tokenizers without the flag
            return tok.decode([token_id])


class RunBackend(Backend):
    """A run of ours: prompts laid out by its task."""

    def __init__(self, run: Any, engine: Engine | None = None):
        self.run = run
        self.engine = engine or run.engine()
        self.model_id = run.config.name
        self.accepts = tuple(self.engine.modalities)

    def _batch(self, layout: Any, param: str) -> PromptBatch:
        try:  # media are preprocessed here: a clip longer than the encoder takes is refused with its length
            return self.run.task.prompt_batch([layout], self.engine.tokenizer, self.engine.modalities)
        except ValueError as err:
            raise RequestError(str(err), param) from None

    def _layout(self, text: str, images: list[bytes], audio: list[bytes], param: str) -> Any:
        if len(images) > 1 or len(audio) > 1:
            raise RequestError("one image or audio clip per request", param)
        try:
            return self.run.task.layout_for_prompt(
                text, image=images[0] if images else None, audio=audio[0] if audio else None
            )
        except (ValueError, FileNotFoundError) as err:  # the task refuses the media or the media are unreadable
            raise RequestError(str(err), param) from None

    def chat(self, turns: list[Turn]) -> PromptBatch:
        if any(t.role == "system" for t in turns):
            raise RequestError(
                f"the run's task ({self.run.config.task.name}) lays out user turns; it takes no system message",
                "messages",
            )
        roles = [t.role for t in turns]
        if not turns or roles[-1] != "user" or roles != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
            raise RequestError("messages must alternate user and assistant turns and end with a user turn", "messages")
        if any(t.images or t.audio for t in turns[:-1]):
            raise RequestError("only the last user turn may carry an image or audio", "messages")
        last = turns[-1]
        layout = self._layout(last.text, last.images, last.audio, "messages")
        history = tuple((q.text, a.text) for q, a in zip(turns[:-1:2], turns[1:-1:2], strict=True))
        return self._batch(replace(layout, history=history), "messages")

    def completion(self, text: str) -> PromptBatch:
        return self._batch(self._layout(text, [], [], "prompt"), "prompt")

    def transcription(self, audio: bytes, prompt: str | None) -> PromptBatch:
        if "audio" not in self.accepts:
            raise RequestError(f"model '{self.model_id}' does not transcribe audio", "file")
        return self._batch(self._layout(prompt or "", [], [audio], "file"), "file")


class LLaDABackend(Backend):
    """A released LLaDA folder (text; the tokenizer's chat template) or LLaDA-V folder (images too: the
    ``llava_llada`` conversation, multimodal/llada_v.py); completions are plain text."""

    def __init__(
        self,
        folder: str | Path,
        sampler: SamplerConfig | None = None,
        device: Any = None,
        dtype: Any = None,
        vision_heads: int = 16,
    ):
        from multimodal.backbone.convert import load_llada_checkpoint
        from multimodal.llada_v import is_llada_v, load_llada_v, sampler_defaults
        from multimodal.tokenizer import HFTokenizer

        folder = Path(folder)
        self.vision = is_llada_v(folder)
        if self.vision:
            model, tokenizer = load_llada_v(folder, dtype=dtype, device=device or "cpu", vision_heads=vision_heads)
            sampler = sampler_defaults(tokenizer, sampler or LLADA_DEFAULT)
            self.accepts = ("image",)
        else:
            model, _ = load_llada_checkpoint(folder, dtype=dtype, device=device or "cpu")
            tokenizer = HFTokenizer(folder)
        self.engine = Engine(model, tokenizer, sampler or LLADA_DEFAULT)
        self.model_id = folder.name

    def chat(self, turns: list[Turn]) -> PromptBatch:
        from multimodal.chat import chat_prompt_ids
        from multimodal.llada_v import prompt_batch

        if any(t.audio for t in turns) or (not self.vision and any(t.images for t in turns)):
            raise RequestError(
                f"model '{self.model_id}' takes {'text and images' if self.vision else 'text'} only", "messages"
            )
        if not turns or turns[-1].role != "user":
            raise RequestError("the last message must be a user turn", "messages")
        messages = [{"role": t.role, "content": t.text} for t in turns]
        if self.vision:
            images = [image for t in turns for image in t.images]
            try:
                return prompt_batch(self.engine.model, self.engine.tokenizer, messages, images)
            except (ValueError, OSError) as err:  # unreadable image
                raise RequestError(str(err), "messages") from None
        return PromptBatch([chat_prompt_ids(self.engine.tokenizer, messages)])

    def completion(self, text: str) -> PromptBatch:
        return PromptBatch([self.engine.tokenizer.encode(text)])


def request_sampler(
    default: SamplerConfig, max_tokens: int | None, temperature: float | None, extra: dict[str, Any] | None
) -> Sampler:
    """The request's own sampler (module docstring); RequestError names what is wrong."""
    extra = dict(extra or {})
    shared = {k: getattr(default, k) for k in SHARED_FIELDS}
    fixed = sorted(set(extra) & set(SHARED_FIELDS))
    if fixed:
        raise RequestError(
            f"sampler.{fixed[0]} is the server's setting ({shared[fixed[0]]!r}), not a request's", "sampler"
        )
    bl = default.block_length
    name = extra.pop("name", default.name)
    try:
        cls = sampler_config_class(name)
    except KeyError as err:
        raise RequestError(f"sampler.name: {err.args[0]}", "sampler") from None
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in asdict(default).items() if k in known}  # a new policy keeps the common settings
    per_block = default.steps // (default.gen_length // bl)
    gen = default.gen_length if max_tokens is None else -(-max_tokens // bl) * bl
    values.update(name=name, gen_length=gen, steps=per_block * (gen // bl))
    if temperature is not None:
        values["temperature"] = temperature
    values.update(extra)
    values.update(shared)
    try:
        return create_sampler(from_dict(cls, values, "sampler."))
    except (ConfigError, SamplerError) as err:
        raise RequestError(str(err), "sampler") from None
