"""The training order: an endless, deterministic stream of batches that can start at any position.

Training reads the examples as one endless index stream: epoch e is a permutation of the data set
drawn from (seed, e), the epochs follow each other, and each optimiser step takes the next
`global batch` = batch_size x world_size indices, rank r the r-th slice of them. A batch may straddle
two epochs; within an epoch no example is repeated or left out. The whole order is a function of
the seed, so the position in it is one number, the samples consumed so far: a resumed run starts
the stream there and reads exactly what the interrupted run would have read next (exact resume,
multimodal/train/resume.py). Because the stream has no end, Lightning sees an iterable without a
length and `train.max_steps` alone ends training.

Length bucketing (multimodal samples vary widely in length: a short question about an image, a long
utterance): each epoch's permutation is cut into windows of `bucket_batches` global batches, each
window sorted by length and split into global batches, and the batches of a window shuffled. Batches
then hold similar lengths (less padding) while the epoch stays a permutation.

This replaces Lightning's DistributedSampler (run.py sets use_distributed_sampler=False): the rank and
world size are read when iteration starts, from torch.distributed, so the same object works in the
process that built it and in the processes ddp_spawn starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches of example indices for one rank, from `start` samples into the stream.

    Args:
        size: examples in the data set.
        batch_size: examples per batch and rank.
        seed: the stream's seed (the run's seed).
        start: samples of the global stream already consumed (all ranks together).
        lengths: per-example lengths for bucketing (needed when bucket_batches > 0).
        bucket_batches: global batches per bucketing window (0: no bucketing).
        rank, world_size: override what torch.distributed says (tests, or a caller that knows).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start: int = 0,
        lengths: Sequence[int] | None = None,
        bucket_batches: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError("the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if bucket_batches > 0 and (lengths is None or len(lengths) != size):
            raise ValueError(f"length bucketing needs {size} lengths, got {None if lengths is None else len(lengths)}")
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths))
        self.bucket_batches = bucket_batches
        self.rank, self.world_size = rank, world_size

    def epoch_order(self, epoch: int, global_batch: int) -> torch.Tensor:
        """(size,) the example indices of epoch `epoch`, in stream order."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=g)
        if self.bucket_batches <= 0:
            return order
        window = self.bucket_batches * global_batch
        batches = []
        for w in range(0, self.size, window):
            part = order[w : w + window]
            part = part[torch.argsort(self.lengths[part], stable=True)]  # type: ignore[index]
            batches += list(part.split(global_batch))
        shuffled = torch.randperm(len(batches), generator=g)
        return torch.cat([batches[i] for i in shuffled])

    def __iter__(self) -> Iterator[list[int]]:
        found_rank, found_world = _rank_and_world()
        rank = found_rank if self.rank is None else self.rank
        world = found_world if self.world_size is None else self.world_size
        global_batch = self.batch_size * world
        epoch, offset = divmod(self.start, self.size)
        order = self.epoch_order(epoch, global_batch)
        pending: list[int] = []  # the current global batch, filled across an epoch boundary if need be
        while True:
            take = min(global_batch - len(pending), self.size - offset)
            pending += order[offset : offset + take].tolist()
            offset += take
            if offset == self.size:
                epoch, offset = epoch + 1, 0
                order = self.epoch_order(epoch, global_batch)
            if len(pending) == global_batch:
                yield pending[rank * self.batch_size : (rank + 1) * self.batch_size]
                pending = []
