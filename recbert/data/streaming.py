"""Training windows streamed from sequence shards (:mod:`recbert.data.shards`) through a
``torch.utils.data.IterableDataset``, with memory bounded by a shuffle buffer, not by the
data.

The training part of every user (leave-one-out: all but the last two events of users
with >= 3 of them) is cut into the same windows as in memory
(:func:`recbert.data.batches.training_windows`). The row groups of the shards (units of
:data:`~recbert.data.shards.ROW_GROUP_USERS` users) are counted once, so every epoch has
an exact plan, the same on every process:

1. the units in a random order drawn from ``(seed, epoch)``, which lays all ``N``
   windows of the epoch out in one stream;
2. rank ``r`` of ``W`` takes the contiguous part ``[r N / W, (r + 1) N / W)`` of it, so
   ranks share the windows with no duplicate and no gap;
3. a rank cuts its part into the same number of steps as every other rank (batches of
   ``ceil(batch_size / W)`` windows, the last one taking the rest), so that
   DistributedDataParallel's collectives always pair up;
4. the steps are grouped in chunks of ``shuffle_buffer_batches``; DataLoader worker
   ``k`` of ``K`` builds the chunks ``k, k + K, ...``. A chunk's windows are shuffled
   together, sorted by length (little padding) and cut into its batches, whose order is
   shuffled again: a seeded ``(seed, epoch, rank, chunk)`` stream, so a batch holds the
   same windows whatever the number of workers.

Each worker reads only the row groups its chunks overlap, one at a time."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recbert.data.batches import Windows, left_pad, training_windows
from recbert.data.sequences import Sequences
from recbert.data.shards import ShardSet, train_lengths
from recbert.errors import ConfigError


def _windows_of(lengths: np.ndarray, span: int, stride: int, min_len: int) -> Windows:
    """The training windows of sequences with these (training) lengths, as flat spans."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    empty = np.zeros(0, dtype=np.int64)
    return training_windows(Sequences(empty, empty, offsets), span, stride, min_len)


class ShardWindows(IterableDataset):
    """Left-padded ``[rows, <= span]`` int64 batches of training windows for rank ``rank``
    of ``world_size``; :meth:`rows` iterates one epoch (see the module docstring)."""

    def __init__(self, shards: ShardSet, span: int, stride: int, min_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, buffer_batches: int = 64, workers: int = 0,
                 name: str = "train"):
        super().__init__()
        self.shards = shards
        self.span, self.stride, self.min_len = span, stride, min_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.buffer_batches, self.workers = buffer_batches, workers
        self.units = shards.units()
        self.unit_windows = self._count_windows()
        self.n_windows = int(self.unit_windows.sum())
        if self.n_windows < world_size:
            raise ConfigError(f"{name}: {self.n_windows} training windows cannot be shared by {world_size} "
                              "processes; start fewer (torchrun --nproc_per_node) or train on more data")
        self.local_batch = math.ceil(batch_size / world_size)
        self.steps_per_epoch = max(1, math.ceil((self.n_windows // world_size) / self.local_batch))
        self.epoch = 1

    def __len__(self) -> int:
        return self.n_windows

    def state_dict(self) -> dict:
        return {}  # an epoch's order is drawn from (seed, epoch) alone

    def load_state_dict(self, state: dict) -> None:
        pass

    def item_counts(self, n_items: int) -> np.ndarray:
        """Events per item in the shards' training part (written with the shards)."""
        counts = self.shards.train_item_counts()
        if len(counts) != n_items:
            raise ConfigError(f"the shards in {self.shards.directory} count {len(counts)} items, the model has "
                              f"{n_items}: they were written with another vocabulary")
        return counts

    def _count_windows(self) -> np.ndarray:
        counts = np.zeros(len(self.units), dtype=np.int64)
        for u, (f, g, _) in enumerate(self.units):
            lengths = self.shards.read(f, g, ("length",)).column("length").to_numpy().astype(np.int64)
            counts[u] = len(_windows_of(train_lengths(lengths), self.span, self.stride, self.min_len))
        return counts

    # -- the plan of an epoch: the same on every rank and worker ---------------------------
    def unit_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.units))

    def batch_bounds(self, rank: int | None = None) -> list[tuple[int, int]]:
        """``[start, stop)`` positions in the epoch's window stream of each of ``rank``'s
        steps (this rank's by default)."""
        r = self.rank if rank is None else rank
        lo, hi = r * self.n_windows // self.world_size, (r + 1) * self.n_windows // self.world_size
        starts = [lo + s * self.local_batch for s in range(self.steps_per_epoch)]
        return list(zip(starts, starts[1:] + [hi]))

    def chunks(self) -> list[list[tuple[int, int]]]:
        bounds = self.batch_bounds()
        return [bounds[i:i + self.buffer_batches] for i in range(0, len(bounds), self.buffer_batches)]

    # -- iteration ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = self.unit_order(self.epoch)
        ends = np.cumsum(self.unit_windows[order])
        for c, chunk in enumerate(self.chunks()):
            if c % n_workers == worker:
                yield from self._chunk_batches(c, chunk, order, ends)

    def rows(self, epoch: int) -> Iterator[torch.Tensor]:
        """This rank's batches of epoch ``epoch`` (``data.loader_workers`` processes read them)."""
        self.set_epoch(epoch)
        if self.workers == 0:
            yield from self
            return
        yield from DataLoader(self, batch_size=None, num_workers=self.workers)

    def _chunk_batches(self, c: int, chunk: list[tuple[int, int]], order: np.ndarray,
                       ends: np.ndarray) -> Iterator[torch.Tensor]:
        lo, hi = chunk[0][0], chunk[-1][1]
        items, starts, stops = self._stream_windows(lo, hi, order, ends)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, c])
        shuffled = rng.permutation(len(starts))
        by_length = shuffled[np.argsort(-(stops - starts)[shuffled], kind="stable")]
        cuts = np.cumsum([0] + [b - a for a, b in chunk])
        for b in rng.permutation(len(chunk)):
            idx = by_length[cuts[b]:cuts[b + 1]]
            yield torch.from_numpy(left_pad(items, starts[idx], stops[idx], self.span))

    def _stream_windows(self, lo: int, hi: int, order: np.ndarray,
                        ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The windows at positions ``[lo, hi)`` of the epoch's stream: one flat item array
        and each window's ``[start, stop)`` in it."""
        first = int(np.searchsorted(ends, lo, side="right"))
        parts, starts, stops, base = [], [], [], 0
        for k in range(first, len(order)):
            unit_start = int(ends[k] - self.unit_windows[order[k]])
            if unit_start >= hi:
                break
            f, g, _ = self.units[order[k]]
            seqs = self.shards.sequences(f, g)
            train = seqs.slice(seqs.offsets[:-1], seqs.offsets[:-1] + train_lengths(seqs.lengths), seqs.user_ids)
            windows = training_windows(train, self.span, self.stride, self.min_len)
            a, b = max(lo - unit_start, 0), min(hi - unit_start, len(windows))
            parts.append(train.items)
            starts.append(windows.starts[a:b] + base)
            stops.append(windows.ends[a:b] + base)
            base += len(train.items)
        return np.concatenate(parts), np.concatenate(starts), np.concatenate(stops)
