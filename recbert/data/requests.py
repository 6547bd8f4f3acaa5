"""Request files of the batch jobs: parquet tables of user ids or (user, item) pairs, and
the positions of their users among the users that have events."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recbert.data.sequences import Sequences
from recbert.errors import DataError

log = logging.getLogger("recbert.pipeline")


def id_array(values: np.ndarray) -> pa.Array:
    """A pyarrow array of original ids (object arrays of strings included)."""
    return pa.array(values.tolist() if values.dtype == object else values)


def read_columns(path: Path, columns: list[str]) -> pl.DataFrame:
    """``columns`` of a parquet file; one clear error for a missing file or column, nulls
    or no rows."""
    if not Path(path).is_file():
        raise DataError(f"{path} does not exist")
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing} (columns: {names})")
    df = pl.read_parquet(path, columns=columns)
    for c in columns:
        nulls = df[c].null_count()
        if nulls:
            raise DataError(f"{path}: column {c!r} has {nulls} null value(s)")
    if df.height == 0:
        raise DataError(f"{path} has no rows")
    return df


def user_positions(seqs: Sequences, wanted: np.ndarray, what: str = "requested users") -> np.ndarray:
    """Row of each wanted user in ``seqs`` (-1 = no events; those are counted in a warning)."""
    pos = pd.Index(seqs.user_ids).get_indexer(wanted)
    unknown = int((pos < 0).sum())
    if unknown:
        sample = [str(u) for u in wanted[pos < 0][:5]]
        log.warning("%d of %d %s have no events and are skipped (e.g. %s)", unknown, len(wanted), what, sample)
    return pos


def select_users(seqs: Sequences, users: Path) -> Sequences:
    """The sequences of the users listed in the ``user_id`` column of ``users``, in its order."""
    pos = user_positions(seqs, read_columns(users, ["user_id"])["user_id"].to_numpy())
    return seqs.select(pos[pos >= 0])
