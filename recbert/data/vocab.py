"""Item vocabulary: original item id <-> contiguous token index.

Token layout: 0, 1, 2 are PAD, MASK and UNK; the real items follow from 3, ordered by
descending event count (ties by first appearance); with ``hash_buckets`` > 0 the
buckets come last, tokens ``first_bucket .. len(vocab) - 1``. Items rarer than
``min_count``, items beyond the ``max_items`` most frequent (a vocabulary cap for
very large ID spaces) and ids never seen in training have no token of their own: they
map to UNK, or, with hash buckets, to the bucket a stable hash of the original id picks
(:func:`stable_hash`: splitmix64 of integer ids, blake2b-64 of the UTF-8 bytes of string
ids; the same bucket in every process, run, machine and library version). Ids that are
not of the vocabulary's kind (a non-digit string or a fraction against integer ids, a
null) still read as UNK: never a crash, never a silent wrong index.

Buckets are input-only tokens, as UNK is: they have embeddings, so a history keeps a
trace of its rare items (ids that share a bucket share that trace), but they are not
catalogue items. The scorer, the losses, evaluation, ``recommend``, the item exports
and the Faiss index cover the real items only; a held-out item without a token (UNK or
a bucket) is a miss in evaluation and carries no loss in training; decode gives None
for buckets as for the specials. The vocabulary, bucket count included, is saved as
parquet beside the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recbert.errors import CheckpointError
from recbert.io import atomic_path

PAD, MASK, UNK = 0, 1, 2
N_SPECIAL = 3
# The bucket hash, saved with every vocabulary: a file hashed another way is refused.
HASH_SCHEME = "splitmix64-int64/blake2b8-utf8"


def catalogue_size(n_tokens: int, hash_buckets: int = 0) -> int:
    """The real items among ``n_tokens`` tokens: all but the specials and the hash buckets."""
    return n_tokens - N_SPECIAL - hash_buckets


def item_index(tokens, n_items: int) -> np.ndarray:
    """0-based catalogue indices of ``tokens`` (``token - N_SPECIAL``); -1 for tokens that
    are not one of the ``n_items`` real items (PAD, MASK, UNK, hash buckets)."""
    idx = np.asarray(tokens, dtype=np.int64) - N_SPECIAL
    return np.where((idx >= 0) & (idx < n_items), idx, -1)


def stable_hash(ids) -> np.ndarray:
    """uint64 hashes of item ids that never change: integers by the splitmix64 finaliser of
    their int64 value (two's complement), strings by blake2b (8-byte digest, little-endian)
    of their UTF-8 bytes, once per distinct string. Not Python's ``hash()`` (salted per
    process) nor polars' (may change between versions)."""
    values = np.asarray(ids)
    if values.dtype.kind in "iu":
        with np.errstate(over="ignore"):
            z = values.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))
    codes, uniques = pd.factorize(values.astype(object).ravel())
    if (codes < 0).any():
        raise ValueError("null ids have no hash")
    digests = [hashlib.blake2b(str(u).encode("utf-8"), digest_size=8).digest() for u in uniques]
    return np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64)[codes].reshape(values.shape)


def item_counts(events: pl.DataFrame | pl.LazyFrame, item: str = "item", order: str = "order") -> pl.DataFrame:
    """``item``, ``n`` (events) and ``order`` (the smallest ``order`` value, i.e. the first
    appearance) per item of ``events``; the parts of a large log can be counted apart and
    merged with :func:`merge_item_counts`."""
    return (events.lazy().group_by(pl.col(item).alias("item"))
            .agg(pl.len().cast(pl.Int64).alias("n"), pl.col(order).min().cast(pl.Int64).alias("order"))
            .collect())


def merge_item_counts(*parts: pl.DataFrame) -> pl.DataFrame:
    """Counts of several parts of a log as one :func:`item_counts` table."""
    return pl.concat(parts).group_by("item").agg(pl.col("n").sum(), pl.col("order").min())


class ItemVocab:
    """Maps original ids (all ints or all strings) to token indices and back."""

    def __init__(self, item_ids: np.ndarray | list, counts: np.ndarray | None = None, hash_buckets: int = 0):
        ids = np.asarray(item_ids)
        if ids.dtype.kind not in "iu":
            ids = ids.astype(object)
        self.item_ids = ids
        self.counts = np.asarray(counts, dtype=np.int64) if counts is not None else None
        if hash_buckets < 0:
            raise ValueError(f"hash_buckets must be >= 0, got {hash_buckets}")
        self.hash_buckets = int(hash_buckets)
        self._index = pd.Index(ids)
        if not self._index.is_unique:
            raise ValueError("item ids in a vocabulary must be unique")

    # -- construction --------------------------------------------------------------
    @classmethod
    def build(cls, items: pl.Series, min_count: int = 1, max_items: int | None = None,
              hash_buckets: int = 0) -> "ItemVocab":
        """The items seen at least ``min_count`` times, at most the ``max_items`` most
        frequent of them (None: no cap); the others go to ``hash_buckets`` buckets (0: UNK)."""
        return cls.from_counts(item_counts(items.to_frame("item").with_row_index("order")), min_count, max_items,
                               hash_buckets)

    @classmethod
    def from_counts(cls, counts: pl.DataFrame, min_count: int = 1, max_items: int | None = None,
                    hash_buckets: int = 0) -> "ItemVocab":
        """The vocabulary of ``counts`` (columns ``item``, ``n`` events, ``order`` of first
        appearance, as :func:`item_counts` gives them, possibly merged over parts)."""
        counts = counts.filter(pl.col("n") >= min_count).sort(["n", "order"], descending=[True, False])
        if max_items is not None:
            counts = counts.head(max_items)
        return cls(counts["item"].to_numpy(), counts["n"].to_numpy(), hash_buckets)

    # -- mapping ---------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of tokens, specials and hash buckets included (the size of the embedding table)."""
        return len(self.item_ids) + N_SPECIAL + self.hash_buckets

    @property
    def n_items(self) -> int:
        """The real items (the catalogue the scorer ranks): no specials, no buckets."""
        return len(self.item_ids)

    @property
    def first_bucket(self) -> int:
        """The first hash-bucket token (``len(self)`` when there are none)."""
        return N_SPECIAL + len(self.item_ids)

    @property
    def is_string(self) -> bool:
        return self.item_ids.dtype == object

    def is_item(self, tokens) -> np.ndarray:
        """True where a token is a real item (not PAD, MASK, UNK or a hash bucket)."""
        return item_index(tokens, self.n_items) >= 0

    def encode(self, ids) -> np.ndarray:
        """Token indices for original ids; ids without a token give their hash bucket
        (``hash_buckets`` > 0) or UNK."""
        values = ids.to_numpy() if isinstance(ids, (pl.Series, pd.Series)) else np.asarray(ids)
        if self.is_string and values.dtype.kind != "O":
            values = values.astype(str).astype(object)
        elif not self.is_string and values.dtype.kind not in "iu":
            # strings against an int vocabulary: only digit strings can match
            values = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy()
        pos = self._index.get_indexer(values)
        tokens = np.where(pos >= 0, pos + N_SPECIAL, UNK).astype(np.int64)
        if self.hash_buckets:
            miss = np.flatnonzero(pos < 0)
            where, keys = self._hashable(values[miss])
            bucket = stable_hash(keys) % np.uint64(self.hash_buckets)
            tokens[miss[where]] = self.first_bucket + bucket.astype(np.int64)
        return tokens

    def _hashable(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(where, keys)``: which of ``values`` are ids of this vocabulary's kind, and
        those ids as :func:`stable_hash` takes them (int64 or strings)."""
        if self.is_string:
            where = ~pd.isna(values)
            return where, values[where]
        if values.dtype.kind in "iu":
            return np.ones(len(values), dtype=bool), values
        if values.dtype.kind == "f":  # from to_numeric: NaN where the input was no number
            where = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0**63)
            return where, values[where].astype(np.int64)
        return np.zeros(len(values), dtype=bool), np.zeros(0, dtype=np.int64)

    def decode(self, tokens) -> np.ndarray:
        """Original ids for token indices; specials and hash buckets decode to None (object array)."""
        t = np.asarray(tokens, dtype=np.int64)
        if (t >= len(self)).any() or (t < 0).any():
            raise ValueError(f"token index out of range [0, {len(self)})")
        real = self.is_item(t)
        if real.all():
            return self.item_ids[t - N_SPECIAL]
        out = np.empty(t.shape, dtype=object)
        out[real] = self.item_ids[t[real] - N_SPECIAL]
        out[~real] = None
        return out

    # -- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        ids = pa.array(self.item_ids.tolist() if self.is_string else self.item_ids)
        cols = {"item_id": ids}
        if self.counts is not None:
            cols["count"] = pa.array(self.counts)
        info = {"specials": ["[PAD]", "[MASK]", "[UNK]"], "first_item_token": N_SPECIAL,
                "hash_buckets": self.hash_buckets, "bucket_hash": HASH_SCHEME}
        table = pa.table(cols).replace_schema_metadata({"recbert.vocab": json.dumps(info)})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "ItemVocab":
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"vocabulary file {p} is missing")
        try:
            table = pq.read_table(p)
        except Exception as exc:
            raise CheckpointError(f"vocabulary file {p} is not readable parquet: {exc}") from None
        if "item_id" not in table.column_names:
            raise CheckpointError(f"vocabulary file {p} has no item_id column")
        ids = table["item_id"].to_numpy(zero_copy_only=False)
        counts = table["count"].to_numpy() if "count" in table.column_names else None
        try:
            return cls(ids, counts, _saved_hash_buckets(p, table.schema.metadata or {}))
        except ValueError as exc:
            raise CheckpointError(f"vocabulary file {p} is not a valid vocabulary: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ItemVocab) and self.hash_buckets == other.hash_buckets
                and np.array_equal(self.item_ids, other.item_ids))

    def __repr__(self) -> str:
        return f"ItemVocab(n_items={self.n_items}, string_ids={self.is_string}, hash_buckets={self.hash_buckets})"


def _saved_hash_buckets(path: Path, metadata: dict) -> int:
    """The bucket count in a vocabulary file's ``recbert.vocab`` metadata (0 for files written
    before buckets existed); a file whose buckets were hashed another way is refused."""
    raw = metadata.get(b"recbert.vocab")
    try:
        info = json.loads(raw) if raw else {}
        buckets = int(info.get("hash_buckets", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"vocabulary file {path} has unreadable recbert.vocab metadata: {exc}") from None
    if buckets < 0:
        raise CheckpointError(f"vocabulary file {path} says hash_buckets={buckets}")
    if buckets and info.get("bucket_hash") != HASH_SCHEME:
        raise CheckpointError(f"vocabulary file {path} hashes its {buckets} buckets with "
                              f"{info.get('bucket_hash')!r}, this recbert with {HASH_SCHEME!r}")
    return buckets
