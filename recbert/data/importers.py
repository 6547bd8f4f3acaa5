"""Importers from public dataset formats to canonical parquet.

Each writes a folder with ``events.parquet`` (``user_id``, ``item_id``,
``timestamp`` plus extra columns) and, where the source has them,
``items.parquet`` / ``users.parquet``. The folder appears whole or not at all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from recbert.errors import DataError
from recbert.io import atomic_dir

log = logging.getLogger("recbert.data")

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"expected file {path} is missing")
    return path


def import_movielens_100k(src: str | Path, out: str | Path) -> dict[str, int]:
    """MovieLens-100K (``u.data``, ``u.item``, ``u.user``) to canonical parquet.

    events: user_id, item_id, timestamp (unix seconds), rating.
    items: item_id, title, release_date, genres (list of genre names).
    users: user_id, age, gender, occupation, zip."""
    src = Path(src)
    try:
        events = pl.read_csv(
            _need(src / "u.data"), separator="\t", has_header=False,
            new_columns=["user_id", "item_id", "rating", "timestamp"],
            schema_overrides={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Int8, "timestamp": pl.Int64},
        ).select("user_id", "item_id", "timestamp", "rating")
        item_cols = ["item_id", "title", "release_date", "video_release_date", "url"] + [f"g_{g}" for g in ML_GENRES]
        raw_items = pl.read_csv(
            _need(src / "u.item"), separator="|", has_header=False, new_columns=item_cols,
            encoding="latin-1", quote_char=None, infer_schema_length=0,
        )
        items = raw_items.filter(pl.col("item_id").is_not_null()).select(
            pl.col("item_id").cast(pl.Int64),
            pl.col("title"),
            pl.col("release_date"),
            pl.concat_list(
                [pl.when(pl.col(f"g_{g}") == "1").then(pl.lit(g)).otherwise(None) for g in ML_GENRES]
            ).list.drop_nulls().alias("genres"),
        )
        users = pl.read_csv(
            _need(src / "u.user"), separator="|", has_header=False,
            new_columns=["user_id", "age", "gender", "occupation", "zip"],
            schema_overrides={"user_id": pl.Int64, "age": pl.Int64, "zip": pl.String},
        ).filter(pl.col("user_id").is_not_null())  # the file may hold blank lines
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{src}: not in the MovieLens-100K format: {exc}") from None
    return _write(out, events=events, items=items, users=users)


def import_s3rec(src: str | Path, out: str | Path, attributes: str | Path | None = None) -> dict[str, int]:
    """S3-Rec text format (one user per line: ``user item item ...`` in time order)
    plus optional ``*_item2attributes.json`` (item -> attribute ids).

    The file has no clock: ``timestamp`` is the event's position in the user's
    line (0, 1, ...), which keeps the order and supports leave-one-out; a global
    time split is meaningless on it."""
    path = _need(Path(src))
    lines = pl.read_csv(path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None)
    parts = lines.select(pl.col("line").str.strip_chars().str.split(" ").alias("tok")).filter(pl.col("tok").list.len() > 0)
    bad = parts.filter(pl.col("tok").list.len() < 2).height
    if bad:
        raise DataError(f"{path}: {bad} line(s) hold a user id but no items")
    try:
        events = (
            parts.with_row_index("line_no")
            .select(
                pl.col("tok").list.first().cast(pl.Int64).alias("user_id"),
                pl.col("tok").list.slice(1).alias("item_id"),
            )
            .explode("item_id")
            .with_columns(
                pl.col("item_id").cast(pl.Int64),
                pl.int_range(pl.len()).over("user_id").cast(pl.Int64).alias("timestamp"),
            )
        )
    except pl.exceptions.InvalidOperationError as exc:
        raise DataError(f"{path}: user and item ids must be integers: {exc}") from None
    tables = {"events": events}
    if attributes is not None:
        apath = _need(Path(attributes))
        try:
            mapping = json.loads(apath.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{apath}: not valid JSON: {exc}") from None
        tables["items"] = pl.DataFrame(
            {"item_id": [int(k) for k in mapping], "attributes": [list(map(int, v)) for v in mapping.values()]},
            schema={"item_id": pl.Int64, "attributes": pl.List(pl.Int64)},
        ).sort("item_id")
    return _write(out, **tables)


def _write(out: str | Path, **tables: pl.DataFrame) -> dict[str, int]:
    with atomic_dir(out) as tmp:
        for name, df in tables.items():
            df.write_parquet(tmp / f"{name}.parquet")
    counts = {name: df.height for name, df in tables.items()}
    log.info("wrote %s: %s", out, ", ".join(f"{k} {v} rows" for k, v in counts.items()))
    return counts
