"""Where a model comes from: one of our runs, or a released LLaDA / LLaDA-V folder, opened the same way
by every verb (`mmdiff sample`, `chat`, `serve`, `lm-eval`, `lmms-eval`), the server and the harnesses.

`open_source(run=..., llada=..., overrides=...)` returns a `Backend`: the `Engine` (model, tokenizer,
decoding settings), the id clients name, what the model takes besides text, and how a chat or a plain
text becomes a prompt:

* `RunBackend` (``--run DIR``): one of our runs. Its task lays a request out the way it lays out a
  typed prompt (`Task.layout_for_prompt`): the last user turn's text with its image or audio, earlier
  turns as history, so a served run answers exactly as `mmdiff sample` does. Decoding: the run's
  sampler config with the ``--set`` overrides applied (any run config key).
* `LLaDABackend` (``--llada DIR``): a released LLaDA folder (config.json, safetensors, tokenizer).
  Chat goes through the tokenizer's own chat template (multimodal/chat.py), completions are the text
  as given. A LLaDA-V folder also takes images: its ``llava_llada`` conversation
  (multimodal/llada_v.py), with the release's suppressed tokens added to the sampler's forbid_ids.
  Decoding: LLaDA's reference settings (low-confidence remasking, 128 tokens in blocks of 32, one
  token per step) with ``--set sampler.<field>=<value>`` applied (`llada_sampler`).

Why here and not in serve/: the command line, the harnesses and the server all open models, and only
the server speaks HTTP; before, each CLI verb branched on run-or-folder by itself and chat imported
the server's module for its `Turn`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from multimodal.config import ConfigError, apply_overrides
from multimodal.device import pick_device
from multimodal.sampling import SamplerConfig, merge_sampler
from multimodal.sampling.engine import Engine
from multimodal.types import PromptBatch

LLADA_DEFAULT = SamplerConfig(steps=128, gen_length=128, block_length=32)


def open_source(
    run: str | Path | None = None,
    llada: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    device: str = "auto",
    dtype: str | None = None,
    vision_heads: int = 16,
    command: str = "mmdiff",
) -> Backend:
    """The backend of a run folder (`run`) or of a released LLaDA / LLaDA-V folder (`llada`), exactly one.

    Args:
        overrides: ``--set KEY=VALUE`` strings: any run config key for a run, ``sampler.*`` for a folder.
        device, dtype, vision_heads: a folder's placement, weight dtype (float32 | bfloat16 | float16) and
            SigLIP heads (a run has its own).
        command: names the command in errors.
    """
    if (run is None) == (llada is None):
        raise ValueError(f"{command} needs one of a run folder or a LLaDA folder")
    if run is not None:
        from multimodal.train.build import load_run  # the application layer: tasks, checkpoints

        return RunBackend(load_run(run, overrides))
    import torch

    sampler = llada_sampler(overrides, command)
    weights = getattr(torch, dtype) if dtype else None
    return LLaDABackend(llada, sampler, pick_device(device), weights, vision_heads)


def llada_sampler(overrides: list[str] | tuple[str, ...], command: str) -> SamplerConfig:
    """A LLaDA folder's decoding: LLaDA's defaults with ``--set sampler.<field>=<value>`` applied."""
    data = apply_overrides({}, list(overrides))
    if set(data) - {"sampler"}:
        raise ConfigError(f"{command} takes only sampler.* overrides, not {', '.join(sorted(set(data) - {'sampler'}))}")
    return merge_sampler(LLADA_DEFAULT, data.get("sampler", {}))


class RequestError(ValueError):
    """A request the backend cannot serve (HTTP 400), with the request field it concerns."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Turn:
    """One chat message: role, text, and its media as bytes by modality (``image``, ``audio``, ...)."""

    role: str
    text: str = ""
    media: dict[str, list[bytes]] = field(default_factory=dict)


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

    def _layout(self, text: str, media: dict[str, list[bytes]], param: str) -> Any:
        if any(len(items) > 1 for items in media.values()):
            raise RequestError("one item of each modality per request", param)
        try:
            return self.run.task.layout_for_prompt(text, {k: items[0] for k, items in media.items() if items})
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
        if any(any(t.media.values()) for t in turns[:-1]):
            raise RequestError("only the last user turn may carry an image or audio", "messages")
        last = turns[-1]
        layout = self._layout(last.text, last.media, "messages")
        history = tuple((q.text, a.text) for q, a in zip(turns[:-1:2], turns[1:-1:2], strict=True))
        return self._batch(replace(layout, history=history), "messages")

    def completion(self, text: str) -> PromptBatch:
        return self._batch(self._layout(text, {}, "prompt"), "prompt")

    def transcription(self, audio: bytes, prompt: str | None) -> PromptBatch:
        if "audio" not in self.accepts:
            raise RequestError(f"model '{self.model_id}' does not transcribe audio", "file")
        return self._batch(self._layout(prompt or "", {"audio": [audio]}, "file"), "file")


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

        takes = {"image"} if self.vision else set()
        if any(items and kind not in takes for t in turns for kind, items in t.media.items()):
            raise RequestError(
                f"model '{self.model_id}' takes {'text and images' if self.vision else 'text'} only", "messages"
            )
        if not turns or turns[-1].role != "user":
            raise RequestError("the last message must be a user turn", "messages")
        messages = [{"role": t.role, "content": t.text} for t in turns]
        if self.vision:
            images = [image for t in turns for image in t.media.get("image", [])]
            try:
                return prompt_batch(self.engine.model, self.engine.tokenizer, messages, images)
            except (ValueError, OSError) as err:  # unreadable image
                raise RequestError(str(err), "messages") from None
        return PromptBatch([chat_prompt_ids(self.engine.tokenizer, messages)])

    def completion(self, text: str) -> PromptBatch:
        return PromptBatch([self.engine.tokenizer.encode(text)])
