"""The server's decoding thread: one continuous batch fed from a bounded queue of jobs.

Requests become `Job`s (a prompt, its media, its own sampler and seed) and are queued with `submit`,
which refuses with `QueueFull` once `max_queue` jobs wait (the server answers 429) and with `Draining`
after `drain` (503). One worker thread owns the model: it encodes each job's media when the job is
taken, adds it to the `ContinuousBatch`, and runs one block of every active job per cycle, so jobs
join and leave at block boundaries. Events go back to the job's asyncio queue on the server's event
loop: ``step`` (positions and tokens committed at a step, when the job asked for them), ``block``
(the answer tokens final so far, after each block), ``done`` (the answer and the model calls it took)
or ``error``. Cancelling a job (its client went away) frees its row at the next block boundary.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from multimodal.sampling.base import Sampler
from multimodal.sampling.batching import ContinuousBatch, Row
from multimodal.sampling.engine import Engine
from multimodal.sampling.loop_settings import LoopSettings
from multimodal.types import PromptBatch

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """`max_queue` jobs are waiting already."""


class Draining(RuntimeError):
    """The server is shutting down and takes no new jobs."""


@dataclass(eq=False)
class Job:
    """One sequence to decode and where its events go.

    Attributes:
        batch: the prompt (one row) with its raw media, laid out by the backend.
        sampler: the job's own policy and settings (block length, cache, attention and guidance are the
            server's).
        seed: seed of its noise (None: drawn at random).
        want_steps: also send ``step`` events (the live page).
        index: the choice index of this job within its request.
    """

    batch: PromptBatch
    sampler: Sampler
    seed: int | None = None
    want_steps: bool = False
    index: int = 0
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    row: Row | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def emit(self, kind: str, payload: Any) -> None:
        """Hand an event to the job's queue on its event loop (thread-safe)."""
        if self.loop is not None and self.events is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, payload))

    def cancel(self) -> None:
        self.cancelled = True
        if self.row is not None:
            self.row.cancelled = True


class Scheduler:
    """A worker thread decoding queued jobs in one continuous batch.

    Args:
        engine: the model, tokenizer and special ids.
        shared: the loop settings every row shares (block length, cache, attention, guidance, compile).
        max_batch: most jobs decoded together.
        max_queue: most jobs waiting for a slot; `submit` refuses beyond.
        call_columns: the fewest canvas columns a model call is charged (batching.partition).
    """

    def __init__(
        self, engine: Engine, shared: LoopSettings, max_batch: int = 32, max_queue: int = 64, call_columns: int = 4096
    ):
        self.engine, self.shared, self.max_queue = engine, shared.loop, max_queue
        self.batch = self._new_batch(max_batch, call_columns)
        self._intake: deque[Job] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.draining = False
        self.served = 0
        self.cycles = 0

    def _new_batch(self, max_rows: int, call_columns: int) -> ContinuousBatch:
        e = self.engine
        return ContinuousBatch(e.model, e.special, self.shared, e.pad_id, max_rows, call_columns)

    # ---- called from the server

    @property
    def waiting(self) -> int:
        """Jobs queued and not decoding yet."""
        return len(self._intake) + len(self.batch.waiting)

    @property
    def running(self) -> int:
        return len(self.batch.active)

    def check(self, job: Job) -> None:
        """Refuse at once what the batch can never run (SamplerError)."""
        self.batch.check(Row(job.batch.prompts[0], job.sampler))

    def submit(self, job: Job) -> Job:
        with self._wake:
            if self.draining:
                raise Draining("the server is shutting down")
            if self.waiting >= self.max_queue:
                raise QueueFull(f"{self.waiting} requests are waiting already (the server's --max-queue)")
            self.check(job)
            self._intake.append(job)
            self._wake.notify()
        return job

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._work, name="mmdiff-decoder", daemon=True)
        self._thread.start()
        return self

    def drain(self) -> None:
        """Take no new jobs; the ones queued and running still finish."""
        with self._wake:
            self.draining = True
            self._wake.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued and running, then end the thread."""
        self.drain()
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker thread

    def _take(self) -> None:
        with self._wake:
            while not self._intake and self.batch.idle and not self._stop:
                self._wake.wait(0.5)
            jobs = list(self._intake)
            self._intake.clear()
        for job in jobs:
            if job.cancelled:
                continue
            try:
                media = self.engine.encode(job.batch)
                seed = job.seed if job.seed is not None else int(torch.randint(0, 2**62, ()).item())
                generator = torch.Generator(device=self.engine.device).manual_seed(seed)
                on_step = _step_events(job) if job.want_steps else None
                job.row = Row(job.batch.prompts[0], job.sampler, generator, media.features, job, on_step)
                job.row.cancelled = job.cancelled
                self.batch.add(job.row)
            except Exception as err:  # a bad item (unreadable image, ...) fails its job, not the server
                log.warning("request refused: %s", err)
                job.emit("error", str(err))

    def _work(self) -> None:
        with torch.inference_mode():
            while True:
                self._take()
                if self.batch.idle:
                    if self._stop:
                        b = self.batch
                        log.info(
                            "decoded %d requests in %d model calls (up to %d rows together); padding %.1f%% of the "
                            "canvas columns", self.served, b.calls, b.peak, 100 * b.padding,
                        )  # fmt: skip
                        return
                    continue
                try:
                    finished = self.batch.step()
                except Exception as err:  # fail the jobs in the batch, keep serving
                    log.exception("decoding failed")
                    for row in [*self.batch.active, *self.batch.waiting]:
                        row.tag.emit("error", f"decoding failed: {err}")
                    self.batch = self._new_batch(self.batch.max_rows, self.batch.call_columns)
                    continue
                self.cycles += 1
                bl = self.shared.block_length
                for row in [*finished, *self.batch.active]:
                    job = row.tag
                    job.emit("block", row.answer[: row.block * bl].tolist())
                for row in finished:
                    self.served += 1
                    row.tag.emit("done", {"tokens": row.answer.tolist(), "nfe": row.nfe})


def _step_events(job: Job):
    def on_step(row: Row, positions: list[int], tokens: list[int]) -> None:
        if positions:
            job.emit("step", {"positions": positions, "tokens": tokens, "nfe": row.nfe})

    return on_step
