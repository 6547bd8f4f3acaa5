"""Downstream tasks on MovieLens-100K built from behaviour sequences alone.

All inputs are item-id sequences encoded with a model's vocabulary; nothing else about
the user reaches the encoder.

User classification (``build_user_task``): one sample per user, the user's most recent
``max_len`` rated items (oldest first; left-padded rows) and a label from ``users.parquet``:

* ``gender``: binary, classes ``["F", "M"]`` (label 1 = "M").
* ``age``: seven buckets as in MovieLens-1M: ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+``
  (the bucket edges are :data:`AGE_EDGES`).
* ``occupation``: the 21 occupation strings of ML-100K, sorted alphabetically.
* ``label``: any categorical column of your own users table (``label_column``); classes
  are its distinct values, sorted as strings; users with a null label are left out.

CTR (``build_ctr_task``): each user's ratings ordered by time (ties keep file order). The
sample for event ``j`` is (history = the user's events with a timestamp STRICTLY before
``t_j``, newest ``max_len`` kept; candidate = item ``j``) with label ``rating >= threshold``
(default 4). Events whose strict history is empty (the user's first timestamp) give no
sample. Split per user by position: the last ``test_fraction`` (default 20%, rounded up) of
each user's events are test candidates; of the earlier ones the last ``val_fraction`` (default
10%, rounded up) are validation and the rest training. Histories always hold all earlier
events of the user, whatever split those belong to (they carry item ids only, never ratings).

The CTR builder also returns three leakage-free baseline features per sample, all from
events strictly before the candidate's timestamp: the user's mean rating so far, the log
popularity of the candidate among all users so far, and the cosine between the candidate's
genre vector and the genre counts of the user's history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import polars as pl

from recbert.data.batches import left_pad
from recbert.data.vocab import ItemVocab
from recbert.errors import DataError

USER_TASKS = ("gender", "age", "occupation", "label")  # 'label': a column named by the caller
TASKS = USER_TASKS + ("ctr",)
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # bucket i holds ages in [EDGES[i-1], EDGES[i])
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
CTR_FEATURES = ("user_mean_rating", "log_item_popularity", "genre_cosine")


def age_bucket(age) -> np.ndarray:
    """Bucket index (0..6) of each age, see :data:`AGE_LABELS`."""
    return np.searchsorted(np.asarray(AGE_EDGES), np.asarray(age), side="right").astype(np.int64)


def _frame(source, what: str) -> pl.DataFrame:
    if isinstance(source, pl.DataFrame):
        return source
    p = Path(source)
    if not p.is_file():
        raise DataError(f"{what} file {p} does not exist")
    return pl.read_parquet(p)


def _sorted_events(events, need_rating: bool = False) -> pl.DataFrame:
    df = _frame(events, "events")
    need = ["user_id", "item_id", "timestamp"] + (["rating"] if need_rating else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"events lack column(s) {missing}; found {df.columns}")
    return df.select(need).with_row_index("_order").sort(["user_id", "timestamp", "_order"])


def _user_bounds(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of each run of equal user ids in a user-sorted array."""
    change = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return change.astype(np.int64), np.r_[change[1:], len(users)].astype(np.int64)


# -- user classification -------------------------------------------------------------------
@dataclass
class UserTask:
    """One row per user: ``rows[i]`` (left-padded tokens), ``labels[i]`` in ``[0, n_classes)``."""

    name: str
    user_ids: np.ndarray
    rows: np.ndarray  # [N, max_len] int64
    labels: np.ndarray  # [N] int64
    classes: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def binary(self) -> bool:
        return self.n_classes == 2

    def __len__(self) -> int:
        return len(self.labels)


def user_labels(task: str, users, label_column: Optional[str] = None) -> tuple[pl.DataFrame, list[str]]:
    """``user_id, label`` for ``task`` and the class names (index = label)."""
    if task not in USER_TASKS:
        raise DataError(f"unknown user task {task!r}; choose one of {list(USER_TASKS)}")
    u = _frame(users, "users")
    if task == "label":
        if not label_column:
            raise DataError("task 'label' needs the users table's label column (experiment.label_column)")
        col = label_column
    else:
        col = task
    where = f"users file {users}" if not isinstance(users, pl.DataFrame) else "users table"
    if col not in u.columns or "user_id" not in u.columns:
        raise DataError(f"{where} needs columns user_id and {col!r}; found {u.columns}")
    u = u.select("user_id", col).drop_nulls()
    if u.height == 0:
        raise DataError(f"{where}: column {col!r} has no non-null labels")
    if u["user_id"].n_unique() != u.height:
        raise DataError(f"{where}: user_id is not unique ({u.height - u['user_id'].n_unique()} duplicate rows)")
    if task == "age":
        return u.with_columns(pl.Series("label", age_bucket(u["age"].to_numpy()))).select("user_id", "label"), \
            list(AGE_LABELS)
    classes = sorted(u[col].cast(pl.String).unique().to_list())
    if len(classes) < 2:
        raise DataError(f"{where}: column {col!r} has a single class {classes}; a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[v] for v in u[col].cast(pl.String).to_list()], dtype=np.int64)
    return u.with_columns(pl.Series("label", labels)).select("user_id", "label"), classes


def build_user_task(task: str, events, users, vocab: ItemVocab, max_len: int,
                    label_column: Optional[str] = None) -> UserTask:
    """Users with both events and a label; each row = newest ``max_len`` items as tokens."""
    labels, classes = user_labels(task, users, label_column)
    df = _sorted_events(events)
    uid = df["user_id"].to_numpy()
    starts, ends = _user_bounds(uid)
    tokens = vocab.encode(df["item_id"])
    user_ids = uid[starts]
    ids = pl.DataFrame({"user_id": user_ids})
    if ids["user_id"].dtype != labels["user_id"].dtype:
        raise DataError(f"user_id is {ids['user_id'].dtype} in the events but {labels['user_id'].dtype} in the "
                        "users table; store both with the same type")
    lab = ids.join(labels, on="user_id", how="left", maintain_order="left")["label"]
    keep = lab.is_not_null().to_numpy()
    if not keep.any():
        raise DataError(f"no user in the events has a {label_column if task == 'label' else task} label")
    rows = left_pad(tokens, starts[keep], ends[keep], max_len)
    name = label_column if task == "label" else task
    return UserTask(name, user_ids[keep], rows, lab.to_numpy()[keep].astype(np.int64), classes)


# -- CTR ---------------------------------------------------------------------------------------
@dataclass
class CTRSplit:
    """``rows[i]``: history tokens (left-padded), ``candidates[i]``: candidate token,
    ``labels[i]``: 1.0 = rating >= threshold; ``features[i]``: baseline features
    (:data:`CTR_FEATURES`); ``times[i]`` / ``history_max_time[i]``: candidate time and the
    latest time in its history (-inf for none)."""

    user_ids: np.ndarray
    rows: np.ndarray
    candidates: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    times: np.ndarray
    history_max_time: np.ndarray
    event_index: np.ndarray  # position of the candidate event in the time-sorted events

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "CTRSplit":
        return CTRSplit(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


@dataclass
class CTRTask:
    train: CTRSplit
    val: CTRSplit
    test: CTRSplit
    threshold: int = 4
    feature_names: tuple[str, ...] = CTR_FEATURES
    info: dict = field(default_factory=dict)


def _genre_matrix(items, item_ids: np.ndarray) -> np.ndarray:
    """Multi-hot genres ``[len(item_ids), G]`` (zeros for unknown items or no table)."""
    if items is None:
        return np.zeros((len(item_ids), 1), dtype=np.float64)
    it = _frame(items, "items")
    if "genres" not in it.columns:
        return np.zeros((len(item_ids), 1), dtype=np.float64)
    names = sorted({g for gs in it["genres"].to_list() if gs for g in gs})
    col = {g: i for i, g in enumerate(names)}
    table = {iid: gs or [] for iid, gs in zip(it["item_id"].to_list(), it["genres"].to_list())}
    out = np.zeros((len(item_ids), max(len(names), 1)), dtype=np.float64)
    for r, iid in enumerate(item_ids.tolist()):
        for g in table.get(iid, []):
            out[r, col[g]] = 1.0
    return out


def build_ctr_task(events, vocab: ItemVocab, max_len: int, items=None, threshold: int = 4,
                   test_fraction: float = 0.2, val_fraction: float = 0.1) -> CTRTask:
    """See the module docstring. ``items``: the items table with ``genres`` (optional)."""
    if not 0.0 < test_fraction < 1.0 or not 0.0 <= val_fraction < 1.0:
        raise DataError("ctr test_fraction must be in (0, 1) and val_fraction in [0, 1)")
    df = _sorted_events(events, need_rating=True)
    uid = df["user_id"].to_numpy()
    t = df["timestamp"].to_numpy()
    rating = df["rating"].to_numpy().astype(np.float64)
    item_ids = df["item_id"].to_numpy()
    tokens = vocab.encode(df["item_id"])
    n = len(df)
    starts, ends = _user_bounds(uid)
    lengths = ends - starts
    user_start = np.repeat(starts, lengths)

    # strict history end: first position of the user with time >= t_j
    hist_end = np.empty(n, dtype=np.int64)
    for s, e in zip(starts, ends):
        hist_end[s:e] = s + np.searchsorted(t[s:e], t[s:e], side="left")
    hist_len = hist_end - user_start
    history_max_time = np.where(hist_len > 0, t[np.maximum(hist_end - 1, 0)].astype(np.float64), -np.inf)

    # split by position within the user
    pos = np.arange(n) - user_start
    n_test = np.ceil(lengths * test_fraction).astype(np.int64)
    n_trval = lengths - n_test
    n_val = np.ceil(n_trval * val_fraction).astype(np.int64)
    is_test = pos >= np.repeat(n_trval, lengths)
    is_val = ~is_test & (pos >= np.repeat(n_trval - n_val, lengths))

    # baseline features, all from events strictly before t_j
    csum_r = np.concatenate([[0.0], np.cumsum(rating)])
    n_before = hist_len.astype(np.float64)
    sum_before = csum_r[hist_end] - csum_r[user_start]
    train_mask = ~is_test & ~is_val
    prior = float(rating[train_mask].mean()) if train_mask.any() else float(rating.mean())
    user_mean = np.where(n_before > 0, sum_before / np.maximum(n_before, 1), prior)

    pop = (
        pl.DataFrame({"item": item_ids, "t": t, "i": np.arange(n)})
        .sort(["item", "t"])
        .with_columns(pl.int_range(pl.len()).over("item").alias("r"))
        .with_columns(pl.col("r").min().over(["item", "t"]).alias("before"))
        .sort("i")["before"].to_numpy().astype(np.float64)
    )
    log_pop = np.log1p(pop)

    genres = _genre_matrix(items, item_ids)
    cum_g = np.vstack([np.zeros((1, genres.shape[1])), np.cumsum(genres, axis=0)])
    profile = cum_g[hist_end] - cum_g[user_start]
    num = (profile * genres).sum(1)
    den = np.linalg.norm(profile, axis=1) * np.linalg.norm(genres, axis=1)
    genre_cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    features = np.stack([user_mean, log_pop, genre_cos], axis=1)

    labels = (rating >= threshold).astype(np.float32)
    has_hist = hist_len > 0
    hist_start = np.maximum(user_start, hist_end - max_len)

    def make(mask: np.ndarray) -> CTRSplit:
        idx = np.flatnonzero(mask & has_hist)
        rows = left_pad(tokens, hist_start[idx], hist_end[idx], max_len)
        return CTRSplit(uid[idx], rows, tokens[idx], labels[idx], features[idx], t[idx],
                        history_max_time[idx], idx)

    task = CTRTask(make(train_mask), make(is_val), make(is_test), threshold)
    task.info = {"events": n, "users": len(starts), "no_history": int((~has_hist).sum()),
                 "train": len(task.train), "val": len(task.val), "test": len(task.test),
                 "positive_rate_train": float(task.train.labels.mean()) if len(task.train) else math.nan,
                 "positive_rate_test": float(task.test.labels.mean()) if len(task.test) else math.nan}
    if len(task.train) == 0 or len(task.test) == 0:
        raise DataError("CTR task: no training or no test samples (too few events per user?)")
    return task


def ctr_pretraining_events(events, test_fraction: float = 0.2) -> pl.DataFrame:
    """The events outside every user's CTR test part (the same positional rule as
    :func:`build_ctr_task`), in time order per user: pretraining on these keeps the CTR
    test period unseen by the encoder."""
    df = _sorted_events(events, need_rating="rating" in _frame(events, "events").columns)
    n = pl.len().over("user_id")
    pos = pl.int_range(pl.len()).over("user_id")
    keep = pos < n - (n.cast(pl.Float64) * test_fraction).ceil().cast(pl.Int64)
    return df.filter(keep).drop("_order")
