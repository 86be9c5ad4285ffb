"""Epoch-less streaming of WebDataset shards for training: per-rank and per-worker splits, a seeded
shuffle buffer, a sample budget and an exact resume position.

The stream of one process (global rank r of R, DataLoader worker w of W)
--------------------------------------------------------------------------
* Epoch e shuffles the shard list with (seed, e); rank r takes every R-th shard of that order from
  position r, and worker w every W-th of those from position w. Within an epoch every shard is read
  by exactly one (rank, worker), so each sample is seen once per epoch, never twice. With fewer
  shards than R x W, every (rank, worker) reads all shards instead and keeps every (R x W)-th raw
  sample from its own offset: the same coverage for R x W times the reading.
* Each worker reads its shards in order, turns every raw sample into training items with the
  caller's `convert` (a task's ``layouts_from_sample``), and passes the items through a shuffle
  buffer seeded by (seed, e, r, w). The buffer is flushed at the end of each epoch, so no item
  crosses an epoch boundary.
* Epochs follow each other without end. Each worker counts its own epochs: with shards of unequal
  sizes, workers and ranks drift apart by a fraction of an epoch, which is harmless for training.

Why epoch-less (DDP): ranks with an uneven share of shards (or of bad samples) would reach the end
of an epoch after different numbers of batches, and a rank that stops early leaves the others
waiting in their all-reduce for ever. An endless stream never ends unevenly; the run ends at
``max_steps``. A `sample_budget` ends the stream too, after the same number of samples on every rank.

Sample budget: the *global* number of training items (over all ranks). Every rank yields
``sample_budget // world_size`` items (the remainder is dropped), i.e. ``ceil(per_rank / batch_size)``
batches, the last one possibly partial: all ranks take the same number of steps. Iterating the
dataset again starts again from `start_batch` (a DataLoader "epoch" is the whole budget), so a
Lightning run with a budget sets ``max_epochs=1``.

Resume: ``start_batch`` is the number of batches this rank has consumed (one per optimiser step).
With batching inside the DataLoader and W workers, batch j of a rank comes from worker j % W
(DataLoader serves workers round-robin) and is that worker's (j // W)-th batch. A restarted
DataLoader starts again at its worker 0, so physical worker p plays the part of logical worker
(p + start_batch) % W; each logical worker skips the items of its own batches below start_batch.
The continued stream is then exactly what the uninterrupted run would have produced, as long as
the shard list, seed, world size, number of workers and batch size are unchanged (the position is
a function of all five) and `convert` is deterministic (a random augmentation draws from the sample
key and ``__epoch__``, as the protein tasks' random crop does, not from a generator shared across calls).

Cost of a resume: the skipped prefix is replayed, not jumped over. Each worker reads the prefix's
tar members and runs `convert` on them (for the tasks here that is JSON parsing plus a header check
of each image or audio item, or an alphabet check of a protein), and runs the shuffle buffer; the
expensive work, collation (image decoding and preprocessing, feature extraction, tokenisation), the
model and the optimiser, never sees it. Replaying is what makes the position exact even when
`convert` rejects samples or expands one sample into several items, neither of which can be known
without converting. The cost is proportional to the samples consumed since the start of the run,
divided among the workers: on the shapes VQA shards (64 px PNGs, 4 questions each) one worker on one
CPU core replays about 9,000 samples (36,000 layouts) a second, so resuming after 100,000 steps of
64 layouts takes about 3 minutes divided by the number of workers.

Bad samples: `convert` signals one by raising ValueError (the tasks' BadRecord carries a short
``reason``); an unreadable tar member is one too. Policy ``skip`` counts them by reason (in
`stats` of the process that iterates, and in a log line per worker and epoch); ``fail`` raises
`BadSample` naming the shard and the sample key. `convert` returning an empty list (or None) drops
a sample on purpose (a filter), counted as ``filtered``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger(__name__)
Convert = Callable[[dict[str, Any]], Iterable[Any] | None]
_URL = re.compile(r"^[a-z][a-z0-9+.-]*:")  # pipe:, gs://, s3://, https://, ... (not a Windows drive letter)


class BadSample(ValueError):
    """A sample that could not be read or converted (policy ``fail``), naming its shard and key."""

    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"shard {shard}, sample {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


def distributed_rank() -> tuple[int, int]:
    """(global rank, world size) from torch.distributed when it is initialised, else from the RANK and
    WORLD_SIZE variables torchrun sets, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def worker_items(
    start_batch: int, batch_size: int, per_rank: int | None, worker: int, workers: int
) -> tuple[int, int | None]:
    """Where one logical worker's item stream starts and stops.

    Batch j of the rank belongs to worker j % workers; batches hold `batch_size` items except the last
    one of a budget, which holds what is left.

    Returns:
        (items to skip: those of the worker's batches below `start_batch`, item index to stop at:
        None for an endless stream).
    """
    if per_rank is None:
        return len(range(worker, start_batch, workers)) * batch_size, None
    batches = -(-per_rank // batch_size)
    last = per_rank - (batches - 1) * batch_size  # items in the final batch

    def items(below: int) -> int:
        owned = range(worker, min(below, batches), workers)
        return len(owned) * batch_size - (batch_size - last if batches - 1 in owned else 0)

    return items(start_batch), items(batches)


def shuffle_buffer(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Stream shuffling: hold `size` items and emit a random one as each new item arrives; at the end
    emit the rest in random order. ``size <= 1`` keeps the order."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0])


class StreamingDataset(IterableDataset):
    """Training items streamed from WebDataset shards (module docstring for the order and the resume).

    Args:
        shards: shard paths or URLs (anything webdataset's gopen opens: local paths, ``pipe:cmd``,
            ``https://``, ``gs://``); local paths must exist.
        convert: raw sample -> training items. The sample holds ``__key__``, ``__url__`` (the shard),
            ``__epoch__`` (this worker's epoch, for per-epoch augmentation) and the encoded members
            (bytes by extension). Raise ValueError for a bad sample; return [] or None to drop one.
        batch_size: items per batch in the DataLoader (needed to turn `start_batch` into positions).
        seed: seed of the shard order and the shuffle buffers.
        shuffle_buffer: items held by each worker's shuffle buffer (0 or 1: no shuffling of items).
        shuffle_shards: shuffle the shard order every epoch (False: the given order in every epoch).
        sample_budget: total items over all ranks after which the stream ends (None: endless).
        start_batch: batches this rank has already consumed (resume).
        rank, world_size: this process's global rank and the number of ranks; both None reads them
            from torch.distributed, or torchrun's environment, when iteration starts.
        errors: ``skip`` (count bad samples and go on) or ``fail`` (raise BadSample).
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        convert: Convert,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        sample_budget: int | None = None,
        start_batch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        errors: Literal["skip", "fail"] = "skip",
    ):
        super().__init__()
        self.shards = [str(s) for s in shards]
        if not self.shards:
            raise ValueError("StreamingDataset needs at least one shard")
        missing = [s for s in self.shards if not _URL.match(s) and not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(f"shard files not found: {', '.join(missing[:5])}")
        if batch_size < 1 or start_batch < 0 or shuffle_buffer < 0:
            raise ValueError(f"need batch_size >= 1, start_batch >= 0, shuffle_buffer >= 0 (got {batch_size}, "
                             f"{start_batch}, {shuffle_buffer})")  # fmt: skip
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if errors not in ("skip", "fail"):
            raise ValueError(f"errors must be 'skip' or 'fail', got {errors!r}")
        if sample_budget is not None and sample_budget < (world_size or 1):
            raise ValueError(f"sample_budget {sample_budget} is smaller than the number of ranks")
        self.convert, self.batch_size, self.seed = convert, batch_size, seed
        self.shuffle_buffer, self.shuffle_shards, self.sample_budget = shuffle_buffer, shuffle_shards, sample_budget
        self.start_batch, self.rank, self.world_size, self.errors = start_batch, rank, world_size, errors
        self.stats: Counter = Counter()  # "kept", "filtered" and skip reasons, of the iterating process

    def __getstate__(self) -> dict[str, Any]:
        # pickled into DataLoader workers (spawn) after torch.distributed is up: fix the rank here,
        # where it is known; a worker process has no process group of its own
        state = self.__dict__.copy()
        if state["rank"] is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            state["rank"], state["world_size"] = distributed_rank()
        return state

    def rank_world(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, self.world_size
        return distributed_rank()

    def per_rank(self, world_size: int) -> int | None:
        """Items each rank yields under the budget (None: endless)."""
        return None if self.sample_budget is None else self.sample_budget // world_size

    def worker_shards(
        self, epoch: int, rank: int, world_size: int, worker: int, workers: int
    ) -> tuple[list[str], int, int]:
        """What one (rank, logical worker) reads in `epoch`: (shards in reading order, every, offset).

        It keeps the raw samples whose index in its shard sequence is `offset` modulo `every`: all of
        them (1, 0) when there are at least ranks x workers shards; with fewer, every slot reads all
        shards and keeps one sample in ranks x workers (more reading, the same coverage).
        """
        if self.shuffle_shards:
            order = [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))]
        else:
            order = list(range(len(self.shards)))
        slots = world_size * workers
        if len(self.shards) < slots:
            return [self.shards[i] for i in order], slots, rank * workers + worker
        return [self.shards[i] for i in order[rank::world_size][worker::workers]], 1, 0

    def _samples(self, url: str) -> Iterator[dict[str, Any]]:
        from webdataset.tariterators import tarfile_samples

        def on_error(exn: Exception) -> bool:
            if self.errors == "fail":
                raise BadSample(url, "?", f"unreadable ({exn})") from exn
            self.stats["unreadable"] += 1
            log.warning("shard %s: skipping unreadable data (%s)", url, exn)
            return True

        yield from tarfile_samples([{"url": url}], handler=on_error)

    def _converted(self, shards: list[str], epoch: int, every: int = 1, offset: int = 0) -> Iterator[Any]:
        index = itertools.count()
        for url in shards:
            for sample in self._samples(url):
                if next(index) % every != offset:
                    continue  # another rank's or worker's sample (fewer shards than slots)
                sample["__epoch__"] = epoch
                try:
                    items = self.convert(sample)
                except ValueError as err:
                    reason = getattr(err, "reason", type(err).__name__)
                    if self.errors == "fail":
                        raise BadSample(url, sample.get("__key__", "?"), str(err)) from err
                    self.stats[reason] += 1
                    continue
                items = list(items or ())
                self.stats["kept" if items else "filtered"] += 1
                yield from items

    def stream(self, rank: int, world_size: int, worker: int, workers: int) -> Iterator[Any]:
        """One logical worker's endless item stream, from the start of the run."""
        for epoch in itertools.count():
            shards, every, offset = self.worker_shards(epoch, rank, world_size, worker, workers)
            rng = random.Random(_seed(self.seed, epoch, rank, worker))
            n = 0
            for item in shuffle_buffer(self._converted(shards, epoch, every, offset), self.shuffle_buffer, rng):
                n += 1
                yield item
            if n == 0:
                raise RuntimeError(f"rank {rank} worker {worker}: no usable sample in epoch {epoch} of shards "
                                   f"{', '.join(shards[:5])} ({dict(self.stats)})")  # fmt: skip
            log.info("rank %d worker %d: epoch %d done, %d items (%s)", rank, worker, epoch, n, dict(self.stats))

    def __iter__(self) -> Iterator[Any]:
        rank, world_size = self.rank_world()
        info = get_worker_info()
        workers, physical = (1, 0) if info is None else (info.num_workers, info.id)
        if len(self.shards) < world_size * workers and physical == 0 and rank == 0:
            log.warning(
                "%d shards for %d rank(s) x %d worker(s): each reads every shard and keeps its share of the "
                "samples; write at least %d shards to split by shard",
                len(self.shards), world_size, workers, world_size * workers,
            )  # fmt: skip
        worker = (physical + self.start_batch) % workers  # the restarted DataLoader begins at worker 0
        skip, stop = worker_items(self.start_batch, self.batch_size, self.per_rank(world_size), worker, workers)
        if skip:
            log.info("rank %d worker %d: replaying %d items (resume at batch %d)", rank, worker, skip, self.start_batch)
        return itertools.islice(self.stream(rank, world_size, worker, workers), skip, stop)


def streaming_loader(
    dataset: StreamingDataset, collate_fn: Callable[[list[Any]], Any] | None = None, num_workers: int = 0, **kwargs
) -> DataLoader:
    """A DataLoader over `dataset` with its batch size, batches served round-robin from the workers
    (the order the resume position assumes; ``in_order=False`` would break it)."""
    if kwargs.get("in_order", True) is False or "batch_size" in kwargs:
        raise ValueError("streaming_loader sets batch_size from the dataset and needs in_order=True")
    return DataLoader(dataset, batch_size=dataset.batch_size, collate_fn=collate_fn, num_workers=num_workers, **kwargs)
