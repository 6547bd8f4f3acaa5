"""Per-user item sequences (CSR layout) and the train / validation / test splits.

A :class:`Sequences` holds every user's token indices back to back in one flat
array with offsets, so millions of users cost two numpy arrays and batches
are cut out without Python loops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recbert.data.events import ITEM, TIME, USER
from recbert.data.vocab import ItemVocab
from recbert.errors import DataError

log = logging.getLogger("recbert.data")


@dataclass
class Sequences:
    """``items[offsets[u]:offsets[u+1]]`` is user ``u``'s sequence, oldest first."""

    user_ids: np.ndarray
    items: np.ndarray  # int64 tokens
    offsets: np.ndarray  # int64, len(user_ids) + 1
    times: np.ndarray | None = None  # event times aligned with ``items``

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def select(self, mask_or_index: np.ndarray) -> "Sequences":
        """Users picked by a boolean mask or an index array (order kept)."""
        idx = np.flatnonzero(mask_or_index) if mask_or_index.dtype == bool else np.asarray(mask_or_index)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        return self.slice(starts, ends, self.user_ids[idx])

    def slice(self, starts: np.ndarray, ends: np.ndarray, user_ids: np.ndarray) -> "Sequences":
        """New sequences made of ``items[starts[i]:ends[i]]`` (flat positions)."""
        lengths = ends - starts
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        pos = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        times = self.times[pos] if self.times is not None else None
        return Sequences(user_ids, self.items[pos], offsets, times)


@dataclass
class EvalSet:
    """Users to score: their input history and the single held-out target token, ranked
    among every item or among ``candidates`` (``recbert.evaluation.candidates``)."""

    inputs: Sequences
    targets: np.ndarray  # int64 tokens
    candidates: np.ndarray | None = None  # int64 tokens of the items ranked; None: every item

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class Splits:
    train: Any  # Sequences, or a ShardSet (recbert.data.shards) that training streams from disk
    val: EvalSet
    test: EvalSet


def with_validation_targets(train: Sequences, val: EvalSet) -> Sequences:
    """``train`` with each validation user's target appended to their training row: the
    training data of a refit (the validation target is the event right after the training
    part under both splits). A validation user without a training row gets a row of the
    validation input and target."""
    index = {u: i for i, u in enumerate(train.user_ids.tolist())}
    where = np.array([index.get(u, -1) for u in val.inputs.user_ids.tolist()], dtype=np.int64)
    extra = np.zeros(len(train), dtype=np.int64)
    extra[where[where >= 0]] = 1
    lengths = train.lengths + extra
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.empty(offsets[-1], dtype=train.items.dtype)
    within = np.arange(len(train.items)) - np.repeat(train.offsets[:-1], train.lengths)
    items[np.repeat(offsets[:-1], train.lengths) + within] = train.items
    known = where >= 0
    items[offsets[where[known]] + train.lengths[where[known]]] = val.targets[known]
    merged = Sequences(train.user_ids, items, offsets)
    if known.all():
        return merged
    alone = np.flatnonzero(~known)  # not among the training rows: their input plus the target
    rows = val.inputs.select(alone)
    lens = rows.lengths + 1
    offs = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    new = np.empty(offs[-1], dtype=train.items.dtype)
    mask = np.ones(offs[-1], dtype=bool)
    mask[offs[1:] - 1] = False
    new[mask], new[~mask] = rows.items, val.targets[alone]
    return Sequences(np.concatenate([train.user_ids, rows.user_ids]), np.concatenate([items, new]),
                     np.concatenate([offsets, offsets[-1] + offs[1:]]))


def build_sequences(events: pl.DataFrame, vocab: ItemVocab, min_user_events: int = 1) -> Sequences:
    """Sort events by user then time (ties keep file order) and encode items."""
    df = events.with_row_index("_order").sort([USER, TIME, "_order"])
    users = df[USER]
    boundaries = np.flatnonzero(users.ne_missing(users.shift(1)).fill_null(True).to_numpy())
    offsets = np.append(boundaries, df.height).astype(np.int64)
    seqs = Sequences(
        user_ids=users.gather(boundaries).to_numpy(),
        items=vocab.encode(df[ITEM]),
        offsets=offsets,
        times=df[TIME].to_numpy(),
    )
    short = seqs.lengths < min_user_events
    if short.any():
        log.info(
            "dropped %d user(s) with fewer than %d events (%d events)",
            int(short.sum()), min_user_events, int(seqs.lengths[short].sum()),
        )
        seqs = seqs.select(~short)
    if len(seqs) == 0:
        raise DataError(f"no user has at least {min_user_events} events (data.min_user_events)")
    return seqs


# leave-one-out evaluates a user with this many events or more (validation + test + history)
LEAVE_ONE_OUT_MIN_EVENTS = 3


def time_split_cuts(times: np.ndarray, val_fraction: float, test_fraction: float) -> tuple[float, float]:
    """The global time split's validation and test cuts: the time quantiles
    ``1 - val - test`` and ``1 - test`` of every event time."""
    t_val, t_test = np.quantile(times, [1.0 - val_fraction - test_fraction, 1.0 - test_fraction])
    return float(t_val), float(t_test)


def leave_one_out(seqs: Sequences) -> Splits:
    """Last event = test target, second-to-last = validation target, the rest = training.

    Users with fewer than 3 events cannot give all three parts: they train on
    all their events and are not evaluated (logged)."""
    starts, ends = seqs.offsets[:-1], seqs.offsets[1:]
    full = seqs.lengths >= LEAVE_ONE_OUT_MIN_EVENTS
    n_short = int((~full).sum())
    if n_short:
        log.info("%d user(s) with fewer than 3 events: used for training only, not evaluated", n_short)
    train_ends = np.where(full, ends - 2, ends)
    train = seqs.slice(starts, train_ends, seqs.user_ids)
    f = np.flatnonzero(full)
    val = EvalSet(seqs.slice(starts[f], ends[f] - 2, seqs.user_ids[f]), seqs.items[ends[f] - 2])
    test = EvalSet(seqs.slice(starts[f], ends[f] - 1, seqs.user_ids[f]), seqs.items[ends[f] - 1])
    if len(test) == 0:
        raise DataError("leave-one-out split: no user has 3 or more events, nothing to evaluate")
    return Splits(train, val, test)


def time_split(seqs: Sequences, val_fraction: float = 0.1, test_fraction: float = 0.1) -> Splits:
    """Global time split: cuts at the time quantiles ``1 - val - test`` and ``1 - test``.

    Training uses events before the validation cut. A user is validated on their
    first event in [val cut, test cut) with the events before the val cut as
    input, and tested on their first event at or after the test cut with all
    events before the test cut as input."""
    if seqs.times is None:
        raise DataError("time split needs event times")
    t_val, t_test = time_split_cuts(seqs.times, val_fraction, test_fraction)
    starts, ends = seqs.offsets[:-1], seqs.offsets[1:]
    before_val = _count_before(seqs, t_val)  # events < cut per user
    before_test = _count_before(seqs, t_test)
    train_keep = before_val > 0
    train = seqs.slice(starts[train_keep], starts[train_keep] + before_val[train_keep], seqs.user_ids[train_keep])

    def eval_set(n_before: np.ndarray, upper: float | None) -> EvalSet:
        first_after = starts + n_before
        ok = (n_before > 0) & (first_after < ends)
        if upper is not None:
            ok &= np.where(ok, seqs.times[np.minimum(first_after, len(seqs.items) - 1)] < upper, False)
        i = np.flatnonzero(ok)
        return EvalSet(seqs.slice(starts[i], first_after[i], seqs.user_ids[i]), seqs.items[first_after[i]])

    val, test = eval_set(before_val, t_test), eval_set(before_test, None)
    log.info("time split at %s / %s: %d train users, %d val, %d test", t_val, t_test, len(train), len(val), len(test))
    if len(test) == 0 or len(train) == 0:
        raise DataError("time split left no training or no test users; adjust data.time_*_fraction")
    return Splits(train, val, test)


def _count_before(seqs: Sequences, cut: float) -> np.ndarray:
    """Events strictly before ``cut`` per user (times are sorted within a user)."""
    before = (seqs.times < cut).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(before)])
    return csum[seqs.offsets[1:]] - csum[seqs.offsets[:-1]]
