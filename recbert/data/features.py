"""Item side features: categorical columns (scalar or list valued) of an items
table, turned into per-token value-index tables for the embedding layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recbert.data.vocab import N_SPECIAL, ItemVocab
from recbert.errors import DataError

MAX_VALUES_PER_ITEM = 32


@dataclass
class FeatureTable:
    name: str
    cardinality: int  # distinct values; indices 1..cardinality, 0 = none
    table: np.ndarray  # [n_tokens, width] int64


def load_item_features(path: str | Path, item_col: str, columns: list[str], vocab: ItemVocab) -> list[FeatureTable]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"item features file {p} does not exist")
    try:
        lf = pl.scan_parquet(p)
        schema = lf.collect_schema()
    except Exception as exc:
        raise DataError(f"item features file {p} is not readable parquet: {exc}") from None
    missing = [c for c in [item_col, *columns] if c not in schema]
    if missing:
        raise DataError(f"{p}: missing column(s) {missing}; found {list(schema.names())}")
    df = lf.select([item_col, *columns]).collect()
    tokens = vocab.encode(df[item_col])
    real = pl.col("token").is_between(N_SPECIAL, vocab.first_bucket, closed="left")  # UNK, buckets: no features
    out = []
    for col in columns:
        values = df.select(pl.Series("token", tokens), pl.col(col).alias("v"))
        if isinstance(schema[col], pl.List):
            values = values.explode("v")
        elif isinstance(schema[col], (pl.Struct, pl.Array)):
            raise DataError(f"{p}: feature column {col!r} must hold scalars or lists, found {schema[col]}")
        values = values.drop_nulls().filter(real).with_columns(pl.col("v").cast(pl.String))
        codes = values["v"].unique(maintain_order=True)
        values = values.with_columns(
            pl.col("v").replace_strict(codes, pl.int_range(1, len(codes) + 1, eager=True)).alias("code"),
            pl.int_range(pl.len()).over("token").alias("slot"),
        ).filter(pl.col("slot") < MAX_VALUES_PER_ITEM)
        width = int(values["slot"].max() or 0) + 1
        table = np.zeros((len(vocab), width), dtype=np.int64)
        table[values["token"].to_numpy(), values["slot"].to_numpy()] = values["code"].to_numpy()
        out.append(FeatureTable(col, len(codes), table))
    return out
