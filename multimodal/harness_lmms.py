"""An lmms-eval model backed by mmdiff (`lmms_eval` from PyPI, extra ``mmdiff[lmms]``).

`MMDiffLMMS` answers lmms-eval's ``generate_until`` requests (image question answering: VQAv2, GQA,
...) through a backend (multimodal/sources.py): one of our runs, whose task lays the
question and the image out as it lays out a typed prompt, or a released LLaDA-V folder, whose
``llava_llada`` conversation does. Per request, the task's context text and the document's images
(``doc_to_visual``) become one user turn; ``max_new_tokens`` becomes the answer canvas (rounded up to
whole blocks, as the server does), ``temperature`` the Gumbel temperature; the answer is cut at the
first ``until`` string. The noise of a request comes from a generator seeded by `seed` and the
request's context, so an answer does not depend on the order the harness sends requests in.

Likelihood requests (multiple-choice tasks) are refused by name: the text-only likelihoods live in
multimodal/harness.py (lm-evaluation-harness). `evaluate` (and ``mmdiff lmms-eval``) runs lmms-eval
tasks, including local task YAMLs from an include path.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

from lmms_eval.api.model import lmms

from multimodal.serve.request_sampler import request_sampler
from multimodal.sources import Backend, Turn


def image_bytes(image: Any) -> bytes:
    """A document's visual (a PIL image, a path or bytes) as encoded bytes, the form backends take."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, str):
        with open(image, "rb") as f:
            return f.read()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class MMDiffLMMS(lmms):
    """lmms-eval's model interface over an mmdiff serving backend (module docstring)."""

    def __init__(self, backend: Backend, seed: int = 0):
        super().__init__()
        self.backend, self.seed = backend, seed

    def generate_until(self, requests: list[Any]) -> list[str]:
        engine = self.backend.engine
        answers = []
        for request in requests:
            context, kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            images = [image_bytes(v) for v in visuals or [] if v is not None]
            batch = self.backend.chat([Turn("user", context, media={"image": images})])
            tokens = kwargs.get("max_new_tokens", kwargs.get("max_gen_toks"))
            sampler = request_sampler(
                engine.sampler_config, int(tokens) if tokens else None, float(kwargs.get("temperature", 0.0)), None
            )
            generator = engine.generator(self.seed + zlib.crc32(context.encode()))
            text = engine.texts(engine.generate(batch, sampler, generator=generator))[0]
            until = kwargs.get("until") or []
            cut = [text.index(s) for s in ([until] if isinstance(until, str) else until) if s and s in text]
            answers.append(text[: min(cut)] if cut else text)
        return answers

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError("MMDiffLMMS answers generate_until tasks only (likelihoods: mmdiff lm-eval)")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("MMDiffLMMS answers single-round generate_until tasks only")


def evaluate(
    lm: MMDiffLMMS, tasks: list[str], include_path: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Run lmms-eval tasks (registered ones, or YAMLs under `include_path`) on `lm`; its results."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    return {"results": out["results"], "n-samples": out.get("n-samples", {})}
