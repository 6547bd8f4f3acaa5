"""A broad log cut so that it holds nothing a target log's evaluation holds out.

Pretraining on a broad log (every rating, every event type) and fine-tuning on a narrow one
(``init_from``) leaks when the broad log contains the narrow log's validation or test events,
or anything after them: the pretrained model would have learnt the answers. This keeps, per
user, the broad events strictly before the first event the target split holds out
(leave-one-out: the user's validation event; time split: the validation cut), and every
event of the users the target log does not evaluate."""

from __future__ import annotations

import polars as pl

from recbert.config import DataConfig
from recbert.data.sequences import LEAVE_ONE_OUT_MIN_EVENTS, time_split_cuts
from recbert.errors import DataError


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


def cut_before_holdout(broad: pl.DataFrame, target: pl.DataFrame, data: DataConfig) -> pl.DataFrame:
    """``broad`` without any event at or after the start of its user's held-out events in
    ``target`` (both with the columns ``data`` names; ``data.split`` as the target run uses)."""
    user, time = data.user_col, data.time_col
    for name, frame in (("broad", broad), ("target", target)):
        missing = [c for c in (user, time) if c not in frame.columns]
        if missing:
            raise DataError(f"the {name} log has no column(s) {missing}; found {frame.columns}")
    starts = holdout_starts(target, data)
    if isinstance(starts, float):
        return broad.filter(pl.col(time) < starts)
    if broad.schema[user] != target.schema[user]:
        raise DataError(f"the broad log's {user!r} is {broad.schema[user]} but the target log's is "
                        f"{target.schema[user]}: the same users need the same ids")
    return (broad.join(starts, on=user, how="left")
            .filter(pl.col("_start").is_null() | (pl.col(time) < pl.col("_start")))
            .drop("_start"))
