"""The sampler protocol: a config and a `step` that decides which masked positions to commit.

Every policy shares the LLaDA reference step (PAPERS.md section 1): candidates are the argmax of
the logits after Gumbel noise, with the noise and the softmax in float64 (float32 Gumbel sampling
lowers the effective temperature); optionally EOS and other ids are forbidden as candidates; the policy scores
each masked position (`confidence`); optionally EOS/EoT candidates are ranked below every other
candidate (done correctly here: the released code's flag has no effect when temperature > 0); then
the `quota` best-scored masked positions are committed. Subclasses override `confidence` (which
order) and, for parallel policies, `select` (how many).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from multimodal.config import ConfigError, from_dict
from multimodal.registry import new_registry
from multimodal.sampling.loop_settings import LoopSettings, SamplerError

SAMPLERS = new_registry("sampler", "sampler")

# Subtracted from the score of EOS/EoT candidates when they must be committed last; larger than
# the spread of any policy's scores, so the relative order among EOS candidates is kept.
EOS_PENALTY = 1.0e6


@dataclass
class SamplerConfig(LoopSettings):
    """A commit policy's settings, with the loop settings it decodes under (loop_settings.py).

    Attributes:
        name: registered policy name.
        steps: total denoising steps over the whole answer (split evenly across blocks).
        gen_length: answer canvas length in tokens.
        temperature: Gumbel temperature; 0 is plain argmax.
        forbid_eos: never propose EOS as a candidate.
        forbid_ids: token ids never proposed as candidates (LLaDA-V: BOS, EOS and the header tokens;
            DSM: every non-residue token).
        eos_lowest_confidence: commit EOS/EoT candidates only after every other candidate.
        stop_at_eos: once an EOS is committed, everything after it becomes EOS and the sequence
            stops there (later blocks are skipped).
        (block_length, cfg_scale, cache, refresh_every, attention, compile: `LoopSettings`)
    """

    name: str = "low_confidence"
    steps: int = 128
    gen_length: int = 128
    temperature: float = 0.0
    forbid_eos: bool = False
    forbid_ids: list[int] = field(default_factory=list)
    eos_lowest_confidence: bool = False
    stop_at_eos: bool = False

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.gen_length <= 0 or self.block_length <= 0:
            raise SamplerError("steps, gen_length and block_length must be positive")
        if self.temperature < 0:
            raise SamplerError(f"temperature must be >= 0, got {self.temperature}")
        super().__post_init__()
        if self.gen_length % self.block_length:
            raise SamplerError(f"gen_length {self.gen_length} is not divisible by block_length {self.block_length}")
        if self.steps % (self.gen_length // self.block_length):
            raise SamplerError(
                f"steps {self.steps} is not divisible by the number of blocks {self.gen_length // self.block_length} "
                "(gen_length / block_length)"
            )


def answer_sampler(
    base: SamplerConfig,
    max_tokens: int | None,
    temperature: float | None = None,
    changes: Mapping[str, Any] | None = None,
    fixed: Collection[str] = (),
) -> SamplerConfig:
    """`base` sized for an answer of at most `max_tokens` (an API's request, a harness's ``max_gen_toks``):
    the canvas is `max_tokens` rounded up to whole blocks and keeps `base`'s steps per block; `temperature`
    and `changes` are applied after (merge_sampler, with its `fixed` keys)."""
    bl = base.block_length
    per_block = base.steps // (base.gen_length // bl)
    gen = base.gen_length if max_tokens is None else -(-max_tokens // bl) * bl
    sized: dict[str, Any] = {"gen_length": gen, "steps": per_block * (gen // bl)}
    if temperature is not None:
        sized["temperature"] = temperature
    return merge_sampler(base, {**sized, **(changes or {})}, fixed)


def merge_sampler(
    base: SamplerConfig, changes: Mapping[str, Any], fixed: Collection[str] = (), fixed_by: str = "the server"
) -> SamplerConfig:
    """`base` with `changes` applied: the one place settings are overridden (the command line's
    ``--set sampler.*`` on a released folder, a server request, a task's own defaults).

    ``name`` in `changes` switches the policy: the new one keeps every setting of `base` it also has.
    Unknown keys and bad values raise ConfigError naming ``sampler.<key>``; keys in `fixed` may not be
    changed (ConfigError naming `fixed_by`, whose value they keep).
    """
    changes = dict(changes)
    held = sorted(k for k in changes if k in fixed)
    if held:
        raise ConfigError(f"sampler.{held[0]} is {fixed_by}'s setting ({getattr(base, held[0])!r}), not a request's")
    name = changes.pop("name", base.name)
    try:
        cls = sampler_config_class(name)
    except KeyError as err:
        raise ConfigError(f"sampler.name: {err.args[0]}") from None
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in asdict(base).items() if k in known}
    values.update(changes, name=name)
    try:
        return from_dict(cls, values, "sampler.")
    except SamplerError as err:
        raise ConfigError(str(err)) from None


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the loop needs: mask, EOS, and the chat end-of-turn (EoT) token if any."""

    mask_id: int
    eos_id: int | None = None
    eot_id: int | None = None


@dataclass
class StepInfo:
    """What a per-step callback receives (tensors are live views: clone what you keep).

    Attributes:
        nfe: forward evaluations so far (this step included).
        block: index of the current block.
        step: step index inside the block.
        x: (B, L) the canvas after this step's commits.
        committed: (B, L) bool, positions committed at this step.
        region: (start, end) of the decoded region inside the canvas.
        block_span: (start, end) columns of the current block.
        logits: (B, Lb, V) the block's logits at this step; candidates: (B, Lb) the tokens proposed.
    """

    nfe: int
    block: int
    step: int
    x: torch.Tensor
    committed: torch.Tensor
    region: tuple[int, int]
    block_span: tuple[int, int] | None = None
    logits: torch.Tensor | None = None
    candidates: torch.Tensor | None = None

    def probability(self) -> torch.Tensor:
        """(B, L) the model's probability of each token committed at this step when it was chosen (NaN
        elsewhere; EOS filled after a stop has none). Computed on demand: a softmax over the vocabulary."""
        out = torch.full(self.x.shape, float("nan"), device=self.x.device)
        if self.logits is not None:
            s, e = self.block_span
            chosen = candidate_probability(self.logits, self.candidates).float()
            out[:, s:e] = torch.where(self.committed[:, s:e], chosen, torch.nan)
        return out


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Sample argmax(logits / T + Gumbel) in float64, as exp(logits) / (-log u)^T; T = 0 is argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    logits64 = logits.double()
    u = torch.rand(logits64.shape, generator=generator, device=logits.device, dtype=torch.float64)
    return (logits64.exp() / (-torch.log(u)) ** temperature).argmax(-1)


def even_quota(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit per step: the block's masks spread evenly, earlier steps take the remainder.

    Args:
        num_masked: (B,) masked positions in the block.
        steps: steps for the block.

    Returns:
        (B, steps) integer counts summing to num_masked.
    """
    base = num_masked[:, None] // steps
    remainder = num_masked[:, None] % steps
    return base + (torch.arange(steps, device=num_masked.device)[None] < remainder).long()


def top_quota(score: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """(B, Lb) bool: the `quota[b]` highest-scored positions of each row (-inf rows never chosen)."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order))
    return (ranks < quota[:, None]) & torch.isfinite(score)


class Sampler:
    """Base policy. Subclasses set `Config` and override `confidence` and possibly `select`.

    Attributes:
        adaptive: the policy commits a variable number of tokens per step; the loop then runs until
            the block is filled (at most `block_steps` iterations) instead of a fixed step count.
        random_order: which masked positions are committed is drawn at random (see `draws_noise`).
    """

    Config = SamplerConfig
    adaptive = False
    random_order = False  # the commit order is drawn at random (then the policy draws noise at any temperature)

    def __init__(self, config: SamplerConfig):
        self.config = config

    @property
    def draws_noise(self) -> bool:
        """Whether `step` draws from its generator (Gumbel noise, a random order); when not, rows with equal
        settings can share one call (batching.py)."""
        return self.config.temperature > 0 or self.random_order

    def block_steps(self, block_length: int, steps_per_block: int) -> int:
        """Iterations of the loop for one block (the configured steps; adaptive policies: the block size)."""
        return block_length if self.adaptive else steps_per_block

    def steps_for(self, num_masked: torch.Tensor, block_length: int, steps_per_block: int) -> int:
        """Iterations for a block given its (B,) masked counts; by default `block_steps`."""
        return self.block_steps(block_length, steps_per_block)

    def quota(self, num_masked: torch.Tensor, steps: int) -> torch.Tensor:
        """(B, steps) planned commits per step for a block (the LLaDA even split)."""
        return even_quota(num_masked, steps)

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, Lb) float64 score of each candidate; higher is committed earlier."""
        raise NotImplementedError

    def select(self, score: torch.Tensor, quota: torch.Tensor, step: int) -> torch.Tensor:
        """(B, Lb) bool positions to commit, given scores (-inf where not masked) and the quota."""
        return top_quota(score, quota)

    def forbid(self, logits: torch.Tensor, special: SpecialIds) -> torch.Tensor:
        """`logits` with `forbid_ids` (and EOS under `forbid_eos`) at -inf: never proposed as candidates."""
        cfg = self.config
        ids = list(cfg.forbid_ids) + ([special.eos_id] if cfg.forbid_eos and special.eos_id is not None else [])
        if not ids:
            return logits
        logits = logits.clone()
        logits[..., ids] = -torch.inf
        return logits

    def step(
        self,
        logits: torch.Tensor,
        masked: torch.Tensor,
        quota: torch.Tensor,
        special: SpecialIds,
        generator: torch.Generator | None = None,
        step: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step on a block.

        Args:
            logits: (B, Lb, V) logits of the block positions.
            masked: (B, Lb) bool, positions still masked (only these may be committed).
            quota: (B,) number of positions to commit (policies may commit more or fewer).
            special: mask / EOS / EoT ids.
            generator: randomness for Gumbel noise and random policies.
            step: index of this step inside the block (positional policies use it).

        Returns:
            x0: (B, Lb) candidate tokens.
            commit: (B, Lb) bool, positions to commit now.
        """
        cfg = self.config
        logits = self.forbid(logits, special)
        x0 = gumbel_argmax(logits, cfg.temperature, generator)
        score = self.confidence(logits, x0, generator)
        if cfg.eos_lowest_confidence:
            for tok in (special.eos_id, special.eot_id):
                if tok is not None:
                    score = torch.where(x0 == tok, score - EOS_PENALTY, score)
        score = torch.where(masked, score, torch.full_like(score, -torch.inf))
        quota = torch.minimum(quota, masked.sum(-1))
        return x0, self.select(score, quota, step) & masked


def candidate_probability(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """(B, Lb) float64 softmax probability of each candidate."""
    p = torch.softmax(logits.double(), dim=-1)
    return p.gather(-1, x0[..., None]).squeeze(-1)


def sampler_config_class(name: str) -> type[SamplerConfig]:
    """The config dataclass of the registered policy `name` (used by the YAML loader)."""
    return SAMPLERS.get(name).Config


def create_sampler(config: SamplerConfig | dict[str, Any] | str) -> Sampler:
    """Build a sampler from its config, a dict with a `name`, or a bare policy name."""
    if isinstance(config, str):
        config = sampler_config_class(config)(name=config)
    elif isinstance(config, dict):
        name = config.get("name", SamplerConfig.name)
        config = sampler_config_class(name)(**config)
    return SAMPLERS.get(config.name)(config)


def list_samplers(pattern: str = "*") -> list[str]:
    return SAMPLERS.names(pattern)
