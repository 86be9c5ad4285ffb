"""An lm-evaluation-harness model backed by mmdiff (`lm_eval` from PyPI, extra ``mmdiff[eval]``).

`MMDiffLM` answers the harness's three request types with a decoding `Engine` (one of our runs, or a
released LLaDA folder):

* ``loglikelihood(context, continuation)``: the Monte-Carlo ELBO of the continuation given the context
  (multimodal/diffusion/likelihood.py, LLaDA's conditional likelihood estimator, `mc_num` masked
  copies), and whether greedy decoding gives the continuation: the engine's sampler at temperature 0
  on a canvas of exactly the continuation's length, compared token for token;
* ``loglikelihood_rolling(text)``: minus the total NLL of the rolling-window ELBO bound over the
  model's context (likelihood.py's `rolling_perplexity`);
* ``generate_until(context, gen_kwargs)``: the engine's sampler on a canvas of ``max_gen_toks``
  (rounded up to whole blocks), the text cut at the first ``until`` string.

Every estimate draws its noise from a generator seeded by `seed` and the request's own text, so a
request gets the same numbers whatever order or batch the harness sends it in. `evaluate` (and
``mmdiff lm-eval``) runs harness tasks on it, including local task YAMLs from an include path.
"""

from __future__ import annotations

import zlib
from types import SimpleNamespace
from typing import Any

import torch
from lm_eval.api.model import LM

from multimodal.diffusion.likelihood import elbo, rolling_perplexity
from multimodal.sampling import answer_sampler, merge_sampler
from multimodal.sampling.engine import Engine


class MMDiffLM(LM):
    """The harness's model interface over an mmdiff `Engine` (module docstring)."""

    def __init__(self, engine: Engine, mc_num: int = 128, batch_size: int = 32, seed: int = 0):
        super().__init__()
        self.engine, self.mc_num, self.batch_size, self.seed = engine, mc_num, batch_size, seed
        self.mask_id = engine.tokenizer.mask_id

    def _generator(self, *texts: str, device: Any = "cpu") -> torch.Generator:
        key = zlib.crc32("\x00".join(texts).encode())
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + key)

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, V) float logits of one forward, no padding."""
        batch = SimpleNamespace(input_ids=ids, attention_mask=None, position_ids=None)
        return self.engine.logits(batch)

    def _encode(self, text: str, what: str) -> list[int]:
        ids = self.engine.tokenizer.encode(text)
        if what == "continuation" and not ids:
            raise ValueError(f"the continuation {text!r} encodes to no tokens: nothing to score")
        return ids

    def _greedy(self, context: list[int], continuation: list[int]) -> bool:
        n = len(continuation)
        base = self.engine.sampler_config
        steps = merge_sampler(base, {"gen_length": n, "block_length": n, "steps": n, "temperature": 0.0})
        out = self.engine.generate([context], steps)
        return out.generated[0].tolist() == continuation

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            ctx, cont = self._encode(context, "context"), self._encode(continuation, "continuation")
            generator = self._generator(context, continuation)
            estimate = elbo(
                self._logits,
                torch.tensor(ctx, dtype=torch.long, device=self.engine.device),
                torch.tensor(cont, dtype=torch.long, device=self.engine.device),
                self.mask_id,
                self.mc_num,
                self.batch_size,
                generator,
            )
            results.append((estimate.log_likelihood, self._greedy(ctx, cont)))
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        window = int(self.engine.model.config.max_seq_len)
        results = []
        for request in requests:
            (text,) = request.args
            ids = torch.tensor(self._encode(text, "continuation"), dtype=torch.long, device=self.engine.device)
            generator = self._generator(text)
            ppl = rolling_perplexity(
                self._logits, ids, self.mask_id, window, window // 2, self.mc_num, self.batch_size, generator
            )
            results.append(-ppl.nll_per_token * ppl.num_tokens)
        return results

    def generate_until(self, requests: list[Any]) -> list[str]:
        base = self.engine.sampler_config
        results = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            config = answer_sampler(
                base, int(kwargs.get("max_gen_toks", base.gen_length)), float(kwargs.get("temperature", 0.0))
            )
            generator = self._generator(context, device=self.engine.device)
            out = self.engine.generate([self._encode(context, "context")], config, generator=generator)
            text = self.engine.texts(out)[0]
            cut = [text.index(s) for s in until if s and s in text]
            results.append(text[: min(cut)] if cut else text)
        return results


def evaluate(
    lm: MMDiffLM, tasks: list[str], include_path: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Run harness tasks (registered ones, or YAMLs under `include_path`) on `lm`; the harness's results."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    return {"results": out["results"], "n-samples": out.get("n-samples", {})}
