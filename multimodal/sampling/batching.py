"""Continuous batching: sequences join and leave a running batch at block boundaries.

LLaDA decodes a sequence block by block, left to right (generate.py). A block boundary is where a
sequence's canvas is final up to the block it starts next, and where Fast-dLLM's caches are refreshed
anyway (a full forward at the block's first step), so it is where a server can change what runs:
`ContinuousBatch.step()` decodes one block of every active sequence together, then drops the finished
and cancelled ones and admits waiting ones for the next block. Each sequence keeps its own prompt
length, answer length, step count, commit policy, temperature, EOS rule and random generator (a
`Row`); what one model call must share stays with the batch: block length, cache, attention,
guidance and compile mode (its `LoopSettings`).

Layout of a cycle: the active rows are split into groups of similar length (`partition`), and
each group is one canvas and one model call per step. Within a group, row i's canvas (prompt + answer
blocks) is placed so that its current block falls on the same columns [S, S + block) as every other
row's: left padding before the shorter prefixes, right padding after the shorter remainders, both
hidden from attention; rotary positions count from each row's first real token and block-causal
attention uses each row's own blocks, so every row sees exactly what it would see decoded alone. Each
row draws its noise from its own generator and its sampler is called only at the steps it would run
alone (`RowSamplers`), so a sequence decodes the same tokens whether it runs alone or among others
joining and leaving, in whichever group (tests/test_batching.py).

Why groups: one canvas for all rows is as wide as the longest prefix + block + the longest remainder,
so with mixed prompt and answer lengths part of every step computes padding (`padding` counts it: 33 %
of the columns for 32 mixed requests, benchmarks/serve.py). Aligning rows on their current block adds
little of that (rows that join together share a block index; for that workload all-at-once gives
27.8 % aligned vs 27.3 % with a per-row block offset); the rest is rows shorter than the longest,
which only separate calls remove. A call's cost does not fall with its size below a point, though (on
2 CPU cores a `llada_small` call of a few hundred columns costs about as much per column as one of
thousands, a 40-column call 2-3x more), so `partition` sorts the rows by prefix length and cuts them
into contiguous groups minimising the sum over groups of max(rows x width, `call_columns`), by
dynamic programming: a split is made only when both sides stay large enough to keep the device busy
and it saves columns. The default (4,096) keeps one canvas for a CPU-sized batch; a compute-bound
GPU batch of long sequences splits.

Each group's `CanvasForward` holds one cache row per sequence. While the batch composition does not
change the groups are kept across blocks (the exact block cache then carries over as in `generate`);
when a sequence joins or leaves, the next cycle partitions and lays the canvases out again and their
first step is a full forward, which Fast-dLLM's prefix and dual caches run at every block start in
any case.

The steps of a block are the one loop of generate.py (`decode_block`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from multimodal.sampling.base import Sampler, SamplerConfig, SamplerError, SpecialIds, StepInfo
from multimodal.sampling.forward import CanvasForward
from multimodal.sampling.generate import decode_block
from multimodal.sampling.loop_settings import LoopSettings
from multimodal.types import DiffusionModel, MediaFeatures


@dataclass(eq=False)
class Row:
    """One sequence of a continuous batch: its settings (given) and its decoding state (kept here).

    Attributes:
        prompt: token ids of the prompt (placeholders expanded).
        sampler: its commit policy and settings; `config.gen_length` tokens are decoded after the prompt.
        generator: its own noise (None: torch's default).
        media: its media, encoded (one row: (1, N, D) features and (1, N) validity by modality), or None.
        tag: the caller's handle (a server request).
        on_step: called after each step with (row, positions committed in the answer, their tokens).
        tokens: (P + G,) the canvas: prompt, then the answer (masks until committed).
        block: index of the answer block decoded next.
        nfe: model calls this row has been part of.
        commit_step: (G,) the row's call index at which each answer token was committed (-2: not yet).
        cancelled: set by the caller; the row leaves at the next block boundary.
    """

    prompt: list[int]
    sampler: Sampler
    generator: torch.Generator | None = None
    media: MediaFeatures | None = None
    tag: Any = None
    on_step: Callable[[Row, list[int], list[int]], None] | None = None
    tokens: torch.Tensor | None = None
    block: int = 0
    nfe: int = 0
    commit_step: torch.Tensor | None = None
    cancelled: bool = False

    @property
    def config(self) -> SamplerConfig:
        return self.sampler.config

    @property
    def num_blocks(self) -> int:
        return self.config.gen_length // self.config.block_length

    @property
    def steps_per_block(self) -> int:
        return self.config.steps // self.num_blocks

    @property
    def answer(self) -> torch.Tensor:
        """(G,) the answer tokens so far."""
        return self.tokens[len(self.prompt) :]

    @property
    def finished(self) -> bool:
        """Every block decoded, or (EOS stop) no mask left after a committed EOS filled the rest."""
        return self.block >= self.num_blocks


class RowSamplers:
    """The rows' own samplers behind one sampler interface, for `decode_block`.

    Row i's sampler is called at exactly the steps it would run decoding alone, with its own row of
    logits, quota and generator: its own step count for the block and, when its policy is adaptive or
    it stops at EOS, not after its block is filled (alone its loop would have ended there); other rows
    commit nothing at that step. The block ends early only when every row would end early alone
    (`adaptive`), so a fixed-schedule row still draws the noise of its remaining steps. Rows that draw
    no noise (temperature 0, a deterministic order) and have equal settings share one call.
    """

    config = None

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.ends_early = [r.sampler.adaptive or r.config.stop_at_eos for r in rows]
        self.adaptive = all(self.ends_early)
        self.steps: list[int] = []
        # rows whose sampler draws no noise and whose settings are equal (answer length, steps aside) give
        # the same commits called together or alone, so they share a call
        self.keys = [None if r.sampler.draws_noise else _settings(r.sampler) for r in rows]

    def steps_for(self, num_masked: torch.Tensor, block_length: int, steps_per_block: int) -> int:
        self.steps = [
            r.sampler.steps_for(num_masked[i : i + 1], block_length, r.steps_per_block) for i, r in enumerate(self.rows)
        ]
        return max(self.steps)

    def quota(self, num_masked: torch.Tensor, steps: int) -> torch.Tensor:
        quota = torch.zeros(len(self.rows), steps, dtype=torch.long, device=num_masked.device)
        for i, (r, n) in enumerate(zip(self.rows, self.steps, strict=True)):
            quota[i, :n] = r.sampler.quota(num_masked[i : i + 1], n)[0]
        return quota

    def step(self, logits, masked, quota, special, generator=None, step=0):
        x0 = torch.zeros(masked.shape, dtype=torch.long, device=masked.device)
        commit = torch.zeros_like(masked)
        filled = (~masked.any(-1)).tolist() if step and any(self.ends_early) else [False] * len(self.rows)
        calls: dict[Any, list[int]] = {}  # rows that share one call: same policy and settings, no noise drawn
        for i in range(len(self.rows)):
            if step >= self.steps[i] or (self.ends_early[i] and filled[i]):
                continue  # decoding alone, this row would not run this step
            key = self.keys[i] if self.keys[i] is not None else ("row", i)
            calls.setdefault(key, []).append(i)
        for rows in calls.values():
            sampler, noise = self.rows[rows[0]].sampler, self.rows[rows[0]].generator
            index = torch.tensor(rows, device=masked.device)
            out, chosen = sampler.step(logits[index], masked[index], quota[index], special, noise, step)
            x0[index], commit[index] = out, chosen
        return x0, commit


@dataclass(eq=False)
class Group:
    """Rows decoded on one canvas: their model calls and where each row starts on it."""

    rows: list[Row]
    forward: CanvasForward
    offsets: list[int]
    b: int = 0  # the current block's index in forward.blocks


def span(rows: list[Row], block_length: int) -> tuple[int, int]:
    """(columns before the current block, columns after it) of one canvas holding `rows`."""
    before = max(len(r.prompt) + r.block * block_length for r in rows)
    after = max(len(r.tokens) - len(r.prompt) - (r.block + 1) * block_length for r in rows)
    return before, after


def partition(rows: list[Row], block_length: int, call_columns: int, limit: int | None = None) -> list[list[Row]]:
    """Cut `rows` into groups decoded as separate canvases (module docstring).

    Rows sorted by prefix length (then remainder) are cut into contiguous runs; a run of n rows whose
    canvas is W columns wide costs max(n * W, call_columns) (a model call of fewer columns takes about
    as long as one of `call_columns`), and no canvas may be wider than `limit`. Dynamic programming
    over the cut points finds the cheapest cutting; ties keep fewer groups.
    """
    order = sorted(rows, key=lambda r: (len(r.prompt) + r.block * block_length, len(r.tokens) - len(r.prompt)))
    n = len(order)
    best = [(0, 0)] + [(float("inf"), 0)] * n  # best[j]: (cost, groups) of the cheapest cutting of order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        before = after = 0
        for i in range(j - 1, -1, -1):  # the last group is order[i:j]
            b, a = span([order[i]], block_length)
            before, after = max(before, b), max(after, a)
            width = before + block_length + after
            if limit is not None and width > limit and i < j - 1:
                break  # wider groups only get wider
            cost = (best[i][0] + max((j - i) * width, call_columns), best[i][1] + 1)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


class ContinuousBatch:
    """Rows decoded together, block by block, joining and leaving at block boundaries (module docstring).

    Args:
        model: the model of generate.py (backbone or multimodal model).
        special: mask / EOS / EoT ids.
        config: what every row shares (a `LoopSettings`, or a sampler config whose loop settings are taken).
        pad_id: id of the padding columns (hidden from attention).
        max_rows: most rows decoded together.
        call_columns: the fewest canvas columns (rows x width) a model call is charged (`partition`):
            0 splits wherever that saves columns, a very large value keeps one canvas.
    """

    def __init__(
        self,
        model: DiffusionModel,
        special: SpecialIds,
        config: LoopSettings,
        pad_id: int = 0,
        max_rows: int = 32,
        call_columns: int = 4096,
    ):
        if max_rows <= 0:
            raise SamplerError(f"max_rows must be positive, got {max_rows}")
        self.model, self.special, self.pad_id, self.max_rows = model, special, pad_id, max_rows
        self.config = config.loop
        self.call_columns = call_columns
        self.limit = getattr(getattr(model, "config", None), "max_seq_len", None)
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.active: list[Row] = []
        self.waiting: list[Row] = []
        self.groups: list[Group] = []
        self.calls = 0  # model calls run, all cycles
        self.peak = 0  # most rows decoded together so far
        self.columns = 0  # canvas columns (rows x width) of every model call, all cycles
        self.filled = 0  # those holding a row's own token (the rest is padding)

    # ---- admission

    def check(self, row: Row) -> None:
        """Refuse a row that can never run here (SamplerError naming what is wrong)."""
        cfg, shared = row.config, self.config
        if cfg.block_length != shared.block_length:
            raise SamplerError(f"block_length {cfg.block_length} differs from the batch's {shared.block_length}")
        if self.limit is not None and len(row.prompt) + cfg.gen_length > self.limit:
            raise SamplerError(
                f"prompt length {len(row.prompt)} + gen_length {cfg.gen_length} exceeds the model context of "
                f"{self.limit} tokens"
            )
        if self.special.mask_id in row.prompt:
            raise SamplerError("prompts contain the mask token; use infill to fill masks inside a text")

    def add(self, row: Row) -> Row:
        """Queue a row; it joins at the next block boundary that has room for it."""
        self.check(row)
        g = row.config.gen_length
        row.tokens = torch.tensor(row.prompt + [self.special.mask_id] * g, dtype=torch.long, device=self.device)
        row.commit_step = torch.full((g,), -2, dtype=torch.long)
        row.block, row.nfe = 0, 0
        self.waiting.append(row)
        return row

    @property
    def idle(self) -> bool:
        return not self.active and not self.waiting

    @property
    def padding(self) -> float:
        """The share of padding in the canvases the model has run (0 when none ran)."""
        return 1.0 - self.filled / self.columns if self.columns else 0.0

    def _admit(self) -> bool:
        """Drop cancelled rows, admit waiting ones (first come first served) while there is room; True if
        the batch changed. A row always fits some canvas (`check`), so only `max_rows` bounds admission."""
        changed = any(r.cancelled for r in self.active)
        self.active = [r for r in self.active if not r.cancelled]
        self.waiting = [r for r in self.waiting if not r.cancelled]
        while self.waiting and len(self.active) < self.max_rows:
            self.active.append(self.waiting.pop(0))
            changed = True
        return changed

    # ---- one block of every row

    def _layout(self, rows: list[Row]) -> Group:
        """Place `rows` on one canvas, current blocks aligned (module docstring)."""
        bl, dev = self.config.block_length, self.device
        s, tail = span(rows, bl)
        width = s + bl + tail
        x = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=dev)
        attention = torch.zeros_like(x)
        conditioned = torch.zeros_like(x, dtype=torch.bool)
        block_index = torch.full_like(x, -width - 1)  # prompt and padding: before every block
        offsets = []
        for i, r in enumerate(rows):
            off = s - len(r.prompt) - r.block * bl
            x[i, off : off + len(r.tokens)] = r.tokens
            attention[i, off : off + len(r.tokens)] = 1
            conditioned[i, off : off + len(r.prompt)] = True
            answer = torch.arange(off + len(r.prompt), off + len(r.tokens), device=dev)
            block_index[i, answer] = torch.div(answer - s, bl, rounding_mode="floor")
            offsets.append(off)
        blocks = [(s + k * bl, s + (k + 1) * bl) for k in range(tail // bl + 1)]
        media = _stack_media([r.media for r in rows], dev)
        causal = block_index if self.config.attention == "block_causal" else None
        forward = CanvasForward(
            self.model, x, attention, conditioned, blocks, self.config, self.special, media, block_index=causal
        )
        return Group(rows, forward, offsets)

    @torch.no_grad()
    def step(self, callback: Callable[[StepInfo], None] | None = None) -> list[Row]:
        """Decode the next block of every active row (after admitting waiting rows); returns the rows that
        finished with it (their `tokens` final). Does nothing when no row is active or waiting."""
        if self._admit() or not self.groups:
            if not self.active:
                self.groups = []
                return []
            parts = partition(self.active, self.config.block_length, self.call_columns, self.limit)
            self.groups = [self._layout(rows) for rows in parts]
        self.peak = max(self.peak, len(self.active))
        finished = [r for group in self.groups for r in self._decode(group, callback)]
        self.active = [r for r in self.active if not r.finished]
        if finished:
            self.groups = []  # the composition changes: partition and lay the canvases out again
        else:
            for group in self.groups:
                group.b += 1
        return finished

    def _decode(self, group: Group, callback: Callable[[StepInfo], None] | None) -> list[Row]:
        """One block of every row of `group`; returns the rows it finished."""
        rows, fwd = group.rows, group.forward
        s, e = fwd.blocks[group.b]
        width = fwd.x.shape[1]
        start = fwd.nfe
        commit = torch.full((len(rows), width - s), -2, dtype=torch.long, device=self.device)
        stop_rows = torch.tensor([r.config.stop_at_eos for r in rows], device=self.device)
        step_cb = self._step_events(group, s, callback) if callback or any(r.on_step for r in rows) else None
        samplers = RowSamplers(rows)
        decode_block(fwd, group.b, samplers, self.special, None, 0, (s, width), commit, stop_rows, step_cb)
        calls = fwd.nfe - start
        self.calls += calls
        self.columns += calls * len(rows) * width
        self.filled += calls * sum(len(r.tokens) for r in rows)
        finished = []
        for i, r in enumerate(rows):
            off, p = group.offsets[i], len(r.prompt)
            r.tokens = fwd.x[i, off : off + len(r.tokens)].clone()
            # columns [s, width) of row i are its answer positions from (s - off - p) on
            lo = s - off - p
            mine = commit[i, : len(r.tokens) - p - lo].cpu()
            done = mine >= 0
            r.commit_step[lo:][done] = r.nfe + mine[done] - start
            r.nfe += calls
            r.block += 1
            if not bool((r.answer == self.special.mask_id).any()):  # an EOS stop filled the rest
                r.block = r.num_blocks
            if r.finished:
                finished.append(r)
        return finished

    def _step_events(self, group: Group, s: int, callback) -> Callable[[StepInfo], None]:
        def on_step(info: StepInfo) -> None:
            if callback is not None:
                callback(info)
            for i, r in enumerate(group.rows):
                if r.on_step is None:
                    continue
                cols = info.committed[i].nonzero().flatten()
                answer_start = group.offsets[i] + len(r.prompt)
                r.on_step(r, (cols - answer_start).tolist(), info.x[i, cols].tolist())

        return on_step

    def run(self, callback: Callable[[StepInfo], None] | None = None) -> None:
        """Step until every row, waiting ones included, has finished."""
        while not self.idle:
            self.step(callback)


def _settings(sampler: Sampler) -> tuple:
    """What a noise-free sampler's step depends on: its policy and settings but the answer length and step
    count (each row's steps for a block and its quota are its own, given to the call)."""
    cfg = sampler.config
    fields = tuple((k, repr(v)) for k, v in sorted(vars(cfg).items()) if k not in ("gen_length", "steps"))
    return (type(sampler), fields)


def _stack_media(media: list[MediaFeatures | None], device: torch.device) -> MediaFeatures | None:
    """One row's features and validity per modality each -> batch tensors, zero-padded to the most feature
    vectors (padding marked invalid; a row without a modality has no placeholders for it)."""
    names = sorted({name for m in media if m is not None for name in m.features})
    if not names:
        return None
    features, valid = {}, {}
    for name in names:
        have = [m.features.get(name) if m is not None else None for m in media]
        ref = next(f for f in have if f is not None)
        n = max(f.shape[1] for f in have if f is not None)
        stacked = ref.new_zeros(len(media), n, ref.shape[-1])
        ok = torch.zeros(len(media), n, dtype=torch.bool, device=device)
        for i, (f, m) in enumerate(zip(have, media, strict=True)):
            if f is not None:
                stacked[i, : f.shape[1]] = f[0]
                row_valid = m.valid.get(name)
                ok[i, : f.shape[1]] = True if row_valid is None else row_valid[0]
        features[name], valid[name] = stacked.to(device), ok
    return MediaFeatures(features, valid)
