"""Item vocabulary: original item id <-> contiguous token index.

Tokens 0, 1, 2 are PAD, MASK and UNK; real items start at 3, ordered by
descending event count (ties by first appearance). Items rarer than
``min_count``, items beyond the ``max_items`` most frequent (a vocabulary cap for
very large ID spaces) and ids never seen in training map to UNK: never a crash,
never a silent wrong index. The vocabulary is saved as parquet beside the model.
"""

from __future__ import annotations

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

    def __init__(self, item_ids: np.ndarray | list, counts: np.ndarray | None = None):
        ids = np.asarray(item_ids)
        if ids.dtype.kind not in "iu":
            ids = ids.astype(object)
        self.item_ids = ids
        self.counts = np.asarray(counts, dtype=np.int64) if counts is not None else None
        self._index = pd.Index(ids)
        if not self._index.is_unique:
            raise ValueError("item ids in a vocabulary must be unique")

    # -- construction --------------------------------------------------------------
    @classmethod
    def build(cls, items: pl.Series, min_count: int = 1, max_items: int | None = None) -> "ItemVocab":
        """The items seen at least ``min_count`` times, at most the ``max_items`` most
        frequent of them (None: no cap)."""
        return cls.from_counts(item_counts(items.to_frame("item").with_row_index("order")), min_count, max_items)

    @classmethod
    def from_counts(cls, counts: pl.DataFrame, min_count: int = 1, max_items: int | None = None) -> "ItemVocab":
        """The vocabulary of ``counts`` (columns ``item``, ``n`` events, ``order`` of first
        appearance, as :func:`item_counts` gives them, possibly merged over parts)."""
        counts = counts.filter(pl.col("n") >= min_count).sort(["n", "order"], descending=[True, False])
        if max_items is not None:
            counts = counts.head(max_items)
        return cls(counts["item"].to_numpy(), counts["n"].to_numpy())

    # -- mapping ---------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of tokens, specials included (the size of the embedding table)."""
        return len(self.item_ids) + N_SPECIAL

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def is_string(self) -> bool:
        return self.item_ids.dtype == object

    def encode(self, ids) -> np.ndarray:
        """Token indices for original ids; unknown ids give UNK."""
        values = ids.to_numpy() if isinstance(ids, (pl.Series, pd.Series)) else np.asarray(ids)
        if self.is_string and values.dtype.kind != "O":
            values = values.astype(str).astype(object)
        elif not self.is_string and values.dtype.kind not in "iu":
            # strings against an int vocabulary: only digit strings can match
            values = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy()
        pos = self._index.get_indexer(values)
        return np.where(pos >= 0, pos + N_SPECIAL, UNK).astype(np.int64)

    def decode(self, tokens) -> np.ndarray:
        """Original ids for token indices; specials decode to None (object array)."""
        t = np.asarray(tokens, dtype=np.int64)
        if (t >= len(self)).any() or (t < 0).any():
            raise ValueError(f"token index out of range [0, {len(self)})")
        real = t >= N_SPECIAL
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
        meta = {"recbert.vocab": json.dumps({"specials": ["[PAD]", "[MASK]", "[UNK]"], "first_item_token": N_SPECIAL})}
        table = pa.table(cols).replace_schema_metadata(meta)
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
        return cls(ids, counts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemVocab) and np.array_equal(self.item_ids, other.item_ids)

    def __repr__(self) -> str:
        return f"ItemVocab(n_items={self.n_items}, string_ids={self.is_string})"
