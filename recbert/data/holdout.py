"""A broad log cut so that it holds nothing a target log's evaluation holds out.

Pretraining on a broad log (every rating, every event type) and fine-tuning on a narrow one
(``init_from``) leaks when the broad log contains the narrow log's validation or test events,
or anything after them: the pretrained model would have learnt the answers. This keeps, per
user, the broad events strictly before the first event the target split holds out
(leave-one-out: the user's validation event; time split: the validation cut), and every
event of the users the target log does not evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import polars as pl

from recbert.config import DataConfig
from recbert.data.events import scan_parquet
from recbert.data.sequences import LEAVE_ONE_OUT_MIN_EVENTS, time_split_cuts
from recbert.errors import DataError
from recbert.io import atomic_path

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def holdout_starts(target: pl.DataFrame, data: DataConfig) -> pl.DataFrame | float:
    """When each user's held-out events start in ``target`` (columns as ``data`` names them):
    under leave-one-out a frame of user -> time of the validation event, for the users it
    evaluates (``LEAVE_ONE_OUT_MIN_EVENTS`` or more, as :func:`~recbert.data.sequences.leave_one_out`); under a
    time split the validation cut, one time for all (as :func:`~recbert.data.sequences.time_split`)."""
    user, time = data.user_col, data.time_col
    if data.split == "time":  # over the users the split keeps (data.min_user_events), as time_split
        kept = target.filter(pl.len().over(user) >= data.min_user_events)
        return time_split_cuts(kept[time].drop_nulls().to_numpy(), data.time_val_fraction, data.time_test_fraction)[0]
    ordered = target.select(user, time).with_row_index("_order").sort([user, time, "_order"])
    return (ordered.group_by(user, maintain_order=True)
            .agg(pl.len().alias("_n"), pl.col(time).tail(2).first().alias("_start"))
            .filter(pl.col("_n") >= max(LEAVE_ONE_OUT_MIN_EVENTS, data.min_user_events))
            .select(user, "_start"))


def cut_before_holdout(broad: Frame, target: pl.DataFrame, data: DataConfig,
                       names: tuple[str, str] = ("broad log", "target log")) -> Frame:
    """``broad`` without any event at or after the start of its user's held-out events in
    ``target`` (both with the columns ``data`` names; ``data.split`` as the target run uses).
    ``broad`` may be lazy (the result is then lazy too); ``names`` name the two logs in errors."""
    user, time = data.user_col, data.time_col
    schemas = broad.collect_schema(), target.collect_schema()
    for name, schema in zip(names, schemas):
        missing = [c for c in (user, time) if c not in schema]
        if missing:
            raise DataError(f"the {name} has no column(s) {missing}; found {schema.names()}")
    if schemas[0][time] != schemas[1][time]:
        raise DataError(f"the {names[0]}'s {time!r} is {schemas[0][time]} but the {names[1]}'s is "
                        f"{schemas[1][time]}: store both times the same way")
    starts = holdout_starts(target, data)
    if isinstance(starts, float):
        return broad.filter(pl.col(time) < starts)
    if schemas[0][user] != schemas[1][user]:
        raise DataError(f"the {names[0]}'s {user!r} is {schemas[0][user]} but the {names[1]}'s is "
                        f"{schemas[1][user]}: the same users need the same ids")
    if isinstance(broad, pl.LazyFrame):
        starts = starts.lazy()
    return (broad.join(starts, on=user, how="left")
            .filter(pl.col("_start").is_null() | (pl.col(time) < pl.col("_start")))
            .drop("_start"))


def write_cut_before_holdout(broad: str | Path, target: str | Path, out: str | Path,
                             data: DataConfig) -> tuple[int, int]:
    """:func:`cut_before_holdout` on parquet files or folders: the broad log is streamed (every
    column kept), the target log's user and time columns read, and the cut broad log written
    to ``out`` (a temporary file renamed into place). Returns (events kept, broad events)."""
    broad_lf, broad_where = scan_parquet(broad)
    target_lf, target_where = scan_parquet(target)
    columns = [c for c in (data.user_col, data.time_col) if c in target_lf.collect_schema()]
    cut = cut_before_holdout(broad_lf, target_lf.select(columns).collect(), data,
                             (f"broad log {broad_where}", f"target log {target_where}"))
    with atomic_path(out) as tmp:
        cut.sink_parquet(tmp)
    kept = pl.scan_parquet(out).select(pl.len()).collect().item()
    return kept, broad_lf.select(pl.len()).collect().item()
