"""Out-of-core events -> per-user sequence shards (parquet), with bounded memory.

:func:`write_shards` turns an events parquet file or folder of any size into a folder of
sequence shards in four streaming passes, never holding more than one shard's events:

1. check the events (present, no nulls, finite times) in one streaming aggregate;
2. split them by a hash of the user id into ``ceil(n_events / data.shard_events)``
   bucket files (polars ``sink_parquet`` with a partition key), so that each user's
   events sit in one bucket;
3. count the items bucket by bucket (exact duplicates dropped) and build the vocabulary
   from the merged counts, exactly as :meth:`ItemVocab.build` does on the whole log (or
   take a given one, e.g. a saved model's for ``init_from``: this pass is then skipped);
4. sort each bucket by user and time, encode the items and write one shard of
   ``user_id``, ``length`` and ``items`` (a list of int32 tokens) rows, oldest event
   first, in row groups of :data:`ROW_GROUP_USERS` users (the unit the streaming reader
   shuffles and shares out, :mod:`recbert.data.streaming`).

Peak memory is set by ``data.shard_events`` (one bucket in polars plus its encoded
copy), not by the size of the log. The folder also holds the vocabulary, the item counts
of the training part (for popularity negatives) and ``manifest.json``: the shard files,
their row counts and a fingerprint of the source files and the settings, so that a
later run with the same events and settings reuses the shards (:func:`ensure_shards`).
The folder is written to a temporary folder and renamed into place: never half-written.
Splits are leave-one-out, taken per row when reading (:class:`ShardSet`)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recbert.config import DataConfig
from recbert.data.events import ITEM, TIME, USER, EventSource, canonical_events, check_events
from recbert.data.sequences import LEAVE_ONE_OUT_MIN_EVENTS, EvalSet, Sequences
from recbert.data.vocab import UNK, ItemVocab, item_counts, item_index, merge_item_counts
from recbert.errors import DataError
from recbert.io import atomic_dir

log = logging.getLogger("recbert.data")
T = TypeVar("T")

MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.parquet"
COUNTS_FILE = "train_item_counts.npy"
ROW_GROUP_USERS = 4096
FORMAT = 1
ORDER, BUCKET = "_order", "_bucket"
# the settings that change what the shards hold
FINGERPRINT_SETTINGS = ("user_col", "item_col", "time_col", "min_item_count", "max_items", "hash_buckets",
                        "min_user_events", "shard_events")


@dataclass(frozen=True)
class ShardSet:
    """A folder of sequence shards written by :func:`write_shards`."""

    directory: Path
    files: tuple[str, ...]
    rows: tuple[int, ...]  # users per file
    n_events: int
    n_eval_users: int  # users with >= 3 events: validated and tested
    fingerprint: Optional[str]
    vocab_given: bool = False  # written with a given vocabulary (e.g. a saved model's), not one built here

    @property
    def n_users(self) -> int:
        return sum(self.rows)

    def __len__(self) -> int:
        return self.n_users

    def path(self, file: int) -> Path:
        return self.directory / self.files[file]

    def vocab(self) -> ItemVocab:
        return ItemVocab.load(self.directory / VOCAB_FILE)

    def train_item_counts(self) -> np.ndarray:
        """Events per real item (catalogue index) in the training part (all but each evaluated
        user's last two events)."""
        return np.load(self.directory / COUNTS_FILE, allow_pickle=False)

    def units(self) -> list[tuple[int, int, int]]:
        """``(file, row group, users)`` of every row group, in file order."""
        out = []
        for f in range(len(self.files)):
            meta = self._parquet(f).metadata
            out.extend((f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups))
        return out

    def read(self, file: int, row_group: int, columns: tuple[str, ...] = ("items",)) -> pa.Table:
        """One row group's ``columns``; a missing or unreadable shard is a :class:`DataError`."""
        return self._reading(file, lambda f: f.read_row_group(row_group, columns=list(columns)))

    def _parquet(self, file: int) -> pq.ParquetFile:
        return self._reading(file, lambda f: f)

    def _reading(self, file: int, read: Callable[[pq.ParquetFile], T]) -> T:
        try:
            return read(pq.ParquetFile(self.path(file)))
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"shard {self.path(file)} is missing or unreadable ({exc}); the shard folder changed "
                            "during the run: write it again (delete it and re-run)") from None

    def sequences(self, file: int, row_group: int) -> Sequences:
        """One row group's users and full sequences (tokens, oldest first)."""
        table = self.read(file, row_group, ("user_id", "items"))
        items = table.column("items").combine_chunks()
        offsets = items.offsets.to_numpy().astype(np.int64)
        return Sequences(table.column("user_id").to_numpy(), items.values.to_numpy().astype(np.int64),
                         offsets - offsets[0])

    def iter_sequences(self) -> Iterator[Sequences]:
        for f, g, _ in self.units():
            yield self.sequences(f, g)

    def eval_set(self, part: str) -> EvalSet:
        """The leave-one-out ``part`` ("val" or "test") of every user with >= 3 events: the
        history before the target, and the target (the second-to-last / last event)."""
        drop = {"val": 2, "test": 1}[part]
        inputs, targets = [], []
        for seqs in self.iter_sequences():
            full = np.flatnonzero(seqs.lengths >= LEAVE_ONE_OUT_MIN_EVENTS)
            starts, ends = seqs.offsets[full], seqs.offsets[full + 1] - drop
            inputs.append(seqs.slice(starts, ends, seqs.user_ids[full]))
            targets.append(seqs.items[ends])
        return EvalSet(concat_sequences(inputs), np.concatenate(targets))


def concat_sequences(parts: list[Sequences]) -> Sequences:
    """The users of ``parts`` one after the other."""
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(np.concatenate([p.user_ids for p in parts]), np.concatenate([p.items for p in parts]), offsets)


def train_lengths(lengths: np.ndarray) -> np.ndarray:
    """Training events per user under leave-one-out: all but the last two of users with
    >= 3 events (their validation and test targets), all of the others'."""
    return np.where(lengths >= LEAVE_ONE_OUT_MIN_EVENTS, lengths - 2, lengths)


# -- writing ----------------------------------------------------------------------------------
def source_fingerprint(source: EventSource, data: DataConfig) -> Optional[str]:
    """A digest of the source files (paths, sizes, modification times) and the shard
    settings; None for an in-memory source (which cannot be recognised later)."""
    if not isinstance(source, (str, Path)):
        return None
    p = Path(source)
    files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    settings = {k: getattr(data, k) for k in FINGERPRINT_SETTINGS}
    payload = json.dumps({"files": stats, "settings": settings, "format": FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def write_shards(source: EventSource, out_dir: str | Path, data: DataConfig,
                 row_group_users: int = ROW_GROUP_USERS, vocab: Optional[ItemVocab] = None) -> ShardSet:
    """Events ``source`` -> sequence shards in ``out_dir`` (replaced atomically), in row
    groups of ``row_group_users`` users; see the module docstring. ``vocab``: encode the
    items with this vocabulary (items it lacks read as ``[UNK]`` or its hash buckets) instead
    of building one from the events; the vocabulary settings of ``data`` then do not apply."""
    started = time.perf_counter()
    lf, where = canonical_events(source, data.user_col, data.item_col, data.time_col)
    n_rows = check_events(lf, where, data.user_col, data.item_col, data.time_col)
    n_buckets = max(1, math.ceil(n_rows / data.shard_events))
    out = Path(out_dir)
    if out.exists() and not (out / MANIFEST_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"shard folder {out} exists and does not hold recbert shards; name a new or empty folder "
                        "in data.shards (it is replaced whole when the shards are written)")
    with atomic_dir(out) as tmp:
        buckets = tmp / "_buckets"
        (lf.with_row_index(ORDER)
           .with_columns((pl.col(USER).hash(0) % n_buckets).alias(BUCKET))
           .sink_parquet(pl.PartitionBy(buckets, key=BUCKET, include_key=False), mkdir=True))
        bucket_dirs = sorted(d for d in buckets.iterdir() if d.is_dir())
        given = vocab is not None
        if vocab is None:
            counts = merge_item_counts(*(item_counts(_read_bucket(d), ITEM, ORDER) for d in bucket_dirs))
            vocab = ItemVocab.from_counts(counts, data.min_item_count, data.max_items, data.hash_buckets)
            del counts
        vocab.save(tmp / VOCAB_FILE)
        train_counts = np.zeros(vocab.n_items, dtype=np.int64)
        files, rows, n_events, n_eval, n_short, n_unique, n_unk = [], [], 0, 0, 0, 0, 0
        for i, d in enumerate(bucket_dirs):
            name = f"part-{i:05d}.parquet"
            bucket = _read_bucket(d)
            n_unique += bucket.height
            seqs, dropped = _bucket_sequences(bucket, vocab, data.min_user_events)
            del bucket
            n_short += dropped
            if given:  # reported for a given vocabulary only (a built one holds every item it kept)
                n_unk += int((seqs.items == UNK).sum())
            if len(seqs) == 0:
                continue
            _write_shard(tmp / name, seqs, row_group_users)
            files.append(name)
            rows.append(len(seqs))
            n_events += len(seqs.items)
            n_eval += int((seqs.lengths >= LEAVE_ONE_OUT_MIN_EVENTS).sum())
            _add_train_counts(train_counts, seqs)
        shutil.rmtree(buckets, ignore_errors=True)
        if n_rows > n_unique:
            log.info("%s: dropped %d exact duplicate event(s) of %d", where, n_rows - n_unique, n_rows)
        if n_unk:
            log.info("%d of %d events (%.1f%%) are items the given vocabulary lacks: they read as [UNK]", n_unk,
                     n_events, 100 * n_unk / max(n_events, 1))
        if n_short:
            log.info("dropped %d user(s) with fewer than %d events", n_short, data.min_user_events)
        if not files:
            raise DataError(f"{where}: no user has at least {data.min_user_events} events (data.min_user_events)")
        if n_eval == 0:
            raise DataError(f"{where}: leave-one-out split: no user has 3 or more events, nothing to evaluate")
        np.save(tmp / COUNTS_FILE, train_counts, allow_pickle=False)
        manifest = {"format": FORMAT, "files": files, "rows": rows, "n_events": n_events, "n_eval_users": n_eval,
                    "n_items": vocab.n_items, "fingerprint": source_fingerprint(source, data), "source": where,
                    "vocab_given": given}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    seconds = time.perf_counter() - started
    log.info("wrote %s: %d shard(s), %d users, %d events, %d items in %.1fs (%.0f events/s)", out, len(files),
             sum(rows), n_events, vocab.n_items, seconds, n_rows / max(seconds, 1e-9))
    return open_shards(out)


def _read_bucket(folder: Path) -> pl.DataFrame:
    """One bucket's events in source order, exact duplicates dropped."""
    return (pl.read_parquet(sorted(folder.glob("*.parquet"))).sort(ORDER)
            .unique([USER, ITEM, TIME], keep="first", maintain_order=True))


def _bucket_sequences(df: pl.DataFrame, vocab: ItemVocab, min_user_events: int) -> tuple[Sequences, int]:
    """The bucket's users (by id) and their encoded sequences, users with fewer than
    ``min_user_events`` events dropped; and how many were dropped."""
    df = df.sort([USER, TIME, ORDER])
    users = df[USER]
    boundaries = np.flatnonzero(users.ne_missing(users.shift(1)).fill_null(True).to_numpy())
    offsets = np.append(boundaries, df.height).astype(np.int64)
    seqs = Sequences(users.gather(boundaries).to_numpy(), vocab.encode(df[ITEM]), offsets)
    short = seqs.lengths < min_user_events
    return (seqs.select(~short) if short.any() else seqs), int(short.sum())


def _write_shard(path: Path, seqs: Sequences, row_group_users: int) -> None:
    items = pa.ListArray.from_arrays(pa.array(seqs.offsets.astype(np.int32)), pa.array(seqs.items.astype(np.int32)))
    user_ids = seqs.user_ids.tolist() if seqs.user_ids.dtype == object else seqs.user_ids
    table = pa.table({"user_id": pa.array(user_ids), "length": pa.array(seqs.lengths.astype(np.int32)),
                      "items": items})
    pq.write_table(table, path, row_group_size=row_group_users)


def _add_train_counts(counts: np.ndarray, seqs: Sequences) -> None:
    """Add the events per item of the training part of ``seqs`` to ``counts``."""
    position = np.arange(len(seqs.items)) - np.repeat(seqs.offsets[:-1], seqs.lengths)
    tokens = seqs.items[position < np.repeat(train_lengths(seqs.lengths), seqs.lengths)]
    items = item_index(tokens, len(counts))
    counts += np.bincount(items[items >= 0], minlength=len(counts))


# -- reading ----------------------------------------------------------------------------------
def open_shards(directory: str | Path) -> ShardSet:
    """The shard set in ``directory``; a :class:`DataError` names what is missing or wrong."""
    d = Path(directory)
    manifest_path = d / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"shard folder {d} has no {MANIFEST_FILE}: it was not written by recbert (or not "
                        "completely); delete it and run again to write the shards")
    try:
        manifest = json.loads(manifest_path.read_text())
        files, rows = tuple(manifest["files"]), tuple(int(r) for r in manifest["rows"])
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')}, this recbert reads format {FORMAT}")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"shard manifest {manifest_path} is not readable ({exc}); delete the folder and run "
                        "again") from None
    for name in (*files, VOCAB_FILE, COUNTS_FILE):
        if not (d / name).is_file():
            raise DataError(f"shard folder {d}: {name} is missing; delete the folder and run again")
    return ShardSet(d, files, rows, int(manifest["n_events"]), int(manifest["n_eval_users"]),
                    manifest.get("fingerprint"), bool(manifest.get("vocab_given", False)))


def ensure_shards(source: EventSource, data: DataConfig, vocab: Optional[ItemVocab] = None) -> ShardSet:
    """The shards in ``data.shards``: reused when they were written from the same source
    files with the same settings and hold the right vocabulary (``vocab`` when given, else
    one built from the events), (re)written otherwise."""
    assert data.shards is not None
    folder = Path(data.shards)
    fingerprint = source_fingerprint(source, data)
    if (folder / MANIFEST_FILE).is_file() and fingerprint is not None:
        existing = open_shards(folder)
        if existing.fingerprint != fingerprint:
            log.info("the shards in %s were written from other events or settings: writing them again", folder)
        elif vocab is not None and existing.vocab() != vocab:
            log.info("the shards in %s hold another item vocabulary than the model's: writing them again with the "
                     "model's", folder)
        elif vocab is None and existing.vocab_given:
            log.info("the shards in %s were written with a saved model's vocabulary: writing them again with one "
                     "built from the events", folder)
        else:
            log.info("reusing the sequence shards in %s (%d users, %d events)", folder, existing.n_users,
                     existing.n_events)
            return existing
    return write_shards(source, folder, data, vocab=vocab)
