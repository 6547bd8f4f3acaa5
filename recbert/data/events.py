"""Canonical events: read, validate and normalise a table of (user, item, time).

The canonical table is a parquet file (or a folder of them, searched recursively,
hive-partitioned or not, all with one schema) with ``user_id``, ``item_id`` and
``timestamp`` columns (names configurable). IDs may be integers
or strings; the timestamp may be an integer, a float or a date/datetime.
A pandas or polars DataFrame is accepted at the Python API edge.

Every problem is reported once, naming the file, the column and the number of
bad rows. Exact duplicate events are dropped and the count is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Union

import polars as pl

from recbert.errors import DataError

log = logging.getLogger("recbert.data")

EventSource = Union[str, Path, pl.DataFrame, pl.LazyFrame, Any]  # Any: pandas.DataFrame

USER, ITEM, TIME = "user_id", "item_id", "timestamp"


def scan_parquet(path: str | Path) -> tuple[pl.LazyFrame, str]:
    """Lazy scan of a parquet file or a folder of parquet files (searched recursively,
    hive-partitioned or not; partition keys in folder names never become columns),
    with the path as it is named in error messages."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"events file {p} does not exist")
    files = _folder_files(p) if p.is_dir() else [p]
    try:
        lf = pl.scan_parquet([str(f) for f in files], hive_partitioning=False)
        lf.collect_schema()
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(f"events file {p} is not a readable parquet file: {exc}") from None
    return lf, str(p)


def _folder_files(folder: Path) -> list[Path]:
    """The ``.parquet`` files below ``folder``, sorted; an error unless there is at
    least one and all share one schema (column names and types, in any order)."""
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise DataError(f"events folder {folder} holds no .parquet files")
    first = _file_schema(files[0])
    for f in files[1:]:
        difference = _schema_difference(_file_schema(f), first)
        if difference:
            raise DataError(f"events folder {folder}: file {f} does not have the schema of "
                            f"{files[0].relative_to(folder)} ({difference}); all files of a folder must "
                            "have the same columns and types")
    return files


def _file_schema(path: Path) -> dict[str, pl.DataType]:
    try:
        return dict(pl.read_parquet_schema(path))
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(f"events file {path} is not a readable parquet file: {exc}") from None


def _schema_difference(schema: dict[str, pl.DataType], reference: dict[str, pl.DataType]) -> str:
    """How ``schema`` differs from ``reference``, in words ("" when they are the same)."""
    parts = [f"column {c!r} is {schema[c]}, not {reference[c]}"
             for c in schema if c in reference and schema[c] != reference[c]]
    extra = [c for c in schema if c not in reference]
    lacking = [c for c in reference if c not in schema]
    if extra:
        parts.append(f"extra column(s) {extra}")
    if lacking:
        parts.append(f"no column(s) {lacking}")
    return "; ".join(parts)


def _as_lazy(source: EventSource) -> tuple[pl.LazyFrame, str]:
    if isinstance(source, (str, Path)):
        return scan_parquet(source)
    if isinstance(source, pl.LazyFrame):
        return source, "<LazyFrame>"
    if isinstance(source, pl.DataFrame):
        return source.lazy(), "<DataFrame>"
    if type(source).__module__.startswith("pandas"):
        return pl.from_pandas(source).lazy(), "<pandas.DataFrame>"
    raise DataError(f"events must be a parquet path or a DataFrame, got {type(source).__name__}")


def id_expr(name: str, dtype: pl.DataType, where: str, role: str) -> pl.Expr:
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int64)
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return pl.col(name).cast(pl.String)
    raise DataError(f"{where}: column {name!r} ({role}) must hold integers or strings, found {dtype}")


def _time_expr(name: str, dtype: pl.DataType, where: str) -> pl.Expr:
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int64)
    if dtype.is_float():
        return pl.col(name).cast(pl.Float64)
    if dtype == pl.Date:
        return pl.col(name).cast(pl.Datetime("us")).dt.epoch("us")
    if isinstance(dtype, pl.Datetime):
        return pl.col(name).dt.epoch("us")
    raise DataError(f"{where}: column {name!r} (timestamp) must be integer, float, date or datetime, found {dtype}")


def canonical_events(
    source: EventSource,
    user_col: str = USER,
    item_col: str = ITEM,
    time_col: str = TIME,
) -> tuple[pl.LazyFrame, str]:
    """A lazy frame of ``source`` with the canonical columns ``user_id``, ``item_id``,
    ``timestamp`` (checked: present, of usable types), and the source's name for messages.
    Nothing is read beyond the schema; :func:`check_events` checks the values."""
    lf, where = _as_lazy(source)
    schema = lf.collect_schema()
    missing = [c for c in (user_col, item_col, time_col) if c not in schema]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found {list(schema.names())}. "
            "Name the columns with data.user_col / data.item_col / data.time_col."
        )
    exprs = [
        id_expr(user_col, schema[user_col], where, "user id").alias(USER),
        id_expr(item_col, schema[item_col], where, "item id").alias(ITEM),
        _time_expr(time_col, schema[time_col], where).alias(TIME),
    ]
    return lf.select(exprs), where


def check_events(events: pl.LazyFrame | pl.DataFrame, where: str, user_col: str = USER, item_col: str = ITEM,
                 time_col: str = TIME) -> int:
    """The number of events of canonical ``events``, after checking in one (streaming)
    pass that there are some, with no nulls and no non-finite times; each problem is a
    :class:`DataError` naming ``where`` and the column as the user named it."""
    lf = events.lazy()
    float_time = lf.collect_schema()[TIME] == pl.Float64
    checks = [pl.len().alias("_rows"), *(pl.col(c).null_count() for c in (USER, ITEM, TIME))]
    if float_time:
        checks.append((~pl.col(TIME).is_finite()).sum().alias("_non_finite"))
    row = lf.select(checks).collect(engine="streaming").row(0, named=True)
    if row["_rows"] == 0:
        raise DataError(f"{where}: holds no events")
    named = {USER: user_col, ITEM: item_col, TIME: time_col}
    nulls = {c: row[c] for c in (USER, ITEM, TIME) if row[c]}
    if nulls:
        parts = ", ".join(f"{n} null value(s) in column {named[c]!r}" for c, n in nulls.items())
        raise DataError(f"{where}: {parts} (of {row['_rows']} rows); drop or fill them before import")
    if float_time and row["_non_finite"]:
        raise DataError(f"{where}: {row['_non_finite']} non-finite value(s) in column {time_col!r}")
    return int(row["_rows"])


def load_events(
    source: EventSource,
    user_col: str = USER,
    item_col: str = ITEM,
    time_col: str = TIME,
) -> pl.DataFrame:
    """Validated events with columns ``user_id``, ``item_id``, ``timestamp``,
    in file order, exact duplicates removed."""
    lf, where = canonical_events(source, user_col, item_col, time_col)
    df = lf.collect(engine="streaming")
    check_events(df, where, user_col, item_col, time_col)
    before = df.height
    df = df.unique(maintain_order=True)
    if df.height < before:
        log.info("%s: dropped %d exact duplicate event(s) of %d", where, before - df.height, before)
    return df
