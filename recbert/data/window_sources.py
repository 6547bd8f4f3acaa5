"""Where an objective's training windows come from: the sequences in memory
(:class:`MemoryWindows`) or sequence shards streamed from disk
(:class:`~recbert.data.streaming.ShardWindows`). Both give, for rank ``rank`` of
``world_size``, the same number of steps per epoch as every other rank, left-padded int64
batches from :meth:`rows`, and the training part's events per item (the popularity the
sampled losses draw negatives by); :func:`window_source` picks one for the training data."""

from __future__ import annotations

from typing import Iterator, Protocol, Union

import numpy as np
import torch

from recbert.config import DataConfig
from recbert.data.batches import global_batch_bounds, left_pad, length_grouped_order, training_windows
from recbert.data.sequences import Sequences
from recbert.data.shards import ShardSet
from recbert.data.streaming import ShardWindows
from recbert.data.vocab import item_index
from recbert.errors import ConfigError
from recbert.runtime import numpy_generator_state, set_numpy_generator_state

TrainData = Union[Sequences, ShardSet]


class WindowSource(Protocol):
    steps_per_epoch: int

    def __len__(self) -> int: ...

    def rows(self, epoch: int) -> Iterator[torch.Tensor]: ...

    def item_counts(self, n_items: int) -> np.ndarray: ...

    def state_dict(self) -> dict: ...  # what the epochs still to come draw from (for checkpoints)

    def load_state_dict(self, state: dict) -> None: ...


class MemoryWindows:
    """Windows of in-memory sequences, batched by similar length in a seeded random order
    per epoch; the order and the global batches of ``batch_size`` windows are the same on
    every rank, and each rank takes every ``world_size``-th row of each."""

    def __init__(self, train: Sequences, span: int, stride: int, min_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, name: str = "train"):
        self.items = train.items
        self.span, self.batch_size = span, batch_size
        self.rank, self.world_size = rank, world_size
        self.windows = training_windows(train, span, stride, min_len=min_len)
        if world_size > 1 and len(self.windows) < world_size:
            raise ConfigError(f"{name}: {len(self.windows)} training windows cannot be shared by {world_size} "
                              "processes; start fewer (torchrun --nproc_per_node) or train on more data")
        self.bounds = global_batch_bounds(len(self.windows), batch_size, world_size)
        self.steps_per_epoch = len(self.bounds)
        self.rng = np.random.default_rng(seed)  # the batch order: the same on every rank

    def __len__(self) -> int:
        return len(self.windows)

    def batch_windows(self, epoch: int) -> Iterator[np.ndarray]:
        """The window indices this rank trains on at each step of epoch ``epoch``: its rows
        of each global batch (all of them in a single process)."""
        order = length_grouped_order(self.windows.ends - self.windows.starts, self.batch_size, self.rng)
        for start, stop in self.bounds:
            yield order[start:stop][self.rank::self.world_size]

    def rows(self, epoch: int) -> Iterator[torch.Tensor]:
        for idx in self.batch_windows(epoch):
            yield torch.from_numpy(left_pad(self.items, self.windows.starts[idx], self.windows.ends[idx], self.span))

    def state_dict(self) -> dict:
        return {"order": numpy_generator_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        set_numpy_generator_state(self.rng, state["order"])

    def item_counts(self, n_items: int) -> np.ndarray:
        items = item_index(self.items, n_items)
        return np.bincount(items[items >= 0], minlength=n_items)


def window_source(train: TrainData, span: int, stride: int, min_len: int, batch_size: int, seed: int = 0,
                  rank: int = 0, world_size: int = 1, name: str = "train",
                  data: DataConfig = DataConfig()) -> WindowSource:
    """The windows of ``train``: in memory for :class:`Sequences`, streamed for shards
    (with ``data``'s shuffle buffer and loader workers)."""
    if isinstance(train, ShardSet):
        return ShardWindows(train, span, stride, min_len, batch_size, seed, rank, world_size,
                               data.shuffle_buffer_batches, data.loader_workers, name)
    return MemoryWindows(train, span, stride, min_len, batch_size, seed, rank, world_size, name)
