"""Seeded synthetic event logs that look like real ones and hide a learnable pattern.

``generate_events(out_dir, config)`` writes a folder

* ``events/part=PPPPP/chunk-CCCCC.parquet``: ``user_id``, ``item_id``, ``timestamp``
  (int64; seconds, strictly increasing per user), hive-partitioned by the user bucket
  ``user_id % n_partitions``, so each user's events are in one partition;
* ``items.parquet``: ``item_id``, ``category`` (a categorical side feature);
* ``successors.parquet``: ``item_id``, ``successor`` (the learnable pattern);
* ``generator.json``: counts, the pattern and the config (what ``generate_events`` returns).

The log: item popularity is Zipf-like (an item's popularity rank is random, not its
id); history lengths are heavy-tailed (a discretised Pareto II above ``min_history``);
a user's events come in sessions (a few events seconds to minutes apart, sessions days
apart). Each event after a user's first is, with probability ``pattern_prob``, the
fixed successor of the user's previous item, and otherwise a draw from the popularity
distribution. An item's successor is a uniform draw from the other items of its
category, so the category predicts the next item's category, and popularity alone
cannot predict the successor.

Users are generated in chunks of about ``rows_per_file`` events, one file per chunk,
so memory is bounded by the chunk and the catalogue, whatever the total size. The
folder appears whole or not at all. IDs start at 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import polars as pl

from recbert.errors import ConfigError
from recbert.io import atomic_dir, write_parquet_batches

log = logging.getLogger("recbert.data")

EVENTS_DIR = "events"
ITEMS_FILE = "items.parquet"
SUCCESSORS_FILE = "successors.parquet"
METADATA_FILE = "generator.json"
PARTITION_KEY = "part"


@dataclass(frozen=True)
class GeneratorConfig:
    """What the synthetic log looks like.

    n_users / n_events: give one (set the other to ``None``); from ``n_events`` the number
        of users is ``n_events / mean_history`` and the realised event count is reported.
    n_items: catalogue size. zipf_exponent: popularity of the item of rank r is
        proportional to ``r ** -zipf_exponent``.
    pattern_prob: chance that an event (after a user's first) is its predecessor's successor.
    mean_history / min_history / max_history: history lengths, heavy-tailed with this mean
        (before clipping at ``max_history``) and minimum. history_tail: the Pareto shape
        (> 1; smaller is a heavier tail).
    mean_session: events per session on average. event_gap / session_gap: mean seconds
        between events of a session / between sessions.
    start_time / start_spread: users' first events are uniform in
        ``[start_time, start_time + start_spread)`` (seconds).
    n_categories: values of the items' ``category`` (each category has >= 2 items).
    n_partitions: user buckets (hive partitions). rows_per_file: about this many events
        per file (files hold whole users), which also bounds memory.
    seed: the same seed and config give the same files.
    """

    n_users: Optional[int] = None
    n_events: Optional[int] = 100_000
    n_items: int = 10_000
    zipf_exponent: float = 1.05
    pattern_prob: float = 0.5
    mean_history: float = 20.0
    min_history: int = 3
    max_history: int = 10_000
    history_tail: float = 2.0
    mean_session: float = 4.0
    event_gap: float = 60.0
    session_gap: float = 2 * 86_400.0
    start_time: int = 1_704_067_200  # 2024-01-01 00:00:00 UTC
    start_spread: float = 90 * 86_400.0
    n_categories: int = 100
    n_partitions: int = 8
    rows_per_file: int = 500_000
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.n_users is None) == (self.n_events is None):
            given = "both" if self.n_users is not None else "neither"
            raise ConfigError(f"GeneratorConfig: give one of n_users and n_events, not {given}")
        for name in ("n_users", "n_events"):
            _check(self, name, getattr(self, name) is None or getattr(self, name) >= 1, ">= 1")
        _check(self, "n_items", self.n_items >= 2, ">= 2")
        _check(self, "zipf_exponent", self.zipf_exponent >= 0, ">= 0")
        _check(self, "pattern_prob", 0 <= self.pattern_prob <= 1, "in [0, 1]")
        _check(self, "min_history", self.min_history >= 1, ">= 1")
        _check(self, "mean_history", self.mean_history > self.min_history, f"> min_history ({self.min_history})")
        _check(self, "max_history", self.max_history > self.mean_history, f"> mean_history ({self.mean_history})")
        _check(self, "history_tail", self.history_tail > 1, "> 1 (the mean is infinite otherwise)")
        _check(self, "mean_session", self.mean_session >= 1, ">= 1")
        _check(self, "event_gap", self.event_gap > 0, "> 0")
        _check(self, "session_gap", self.session_gap > self.event_gap, f"> event_gap ({self.event_gap})")
        _check(self, "start_time", self.start_time >= 0, ">= 0")
        _check(self, "start_spread", self.start_spread >= 0, ">= 0")
        _check(self, "n_categories", 1 <= self.n_categories <= self.n_items // 2,
               f"in [1, n_items / 2] (each category holds >= 2 items; n_items = {self.n_items})")
        _check(self, "n_partitions", self.n_partitions >= 1, ">= 1")
        _check(self, "rows_per_file", self.rows_per_file >= 1, ">= 1")

    @property
    def users(self) -> int:
        """The number of users to generate."""
        if self.n_users is not None:
            return self.n_users
        return max(1, round(self.n_events / self.mean_history))

    @property
    def users_per_file(self) -> int:
        """Users per chunk (and file): ``rows_per_file`` events at the mean history length."""
        return max(1, self.rows_per_file // math.ceil(self.mean_history))


def _check(cfg: GeneratorConfig, name: str, ok: bool, bound: str) -> None:
    if not ok:
        raise ConfigError(f"GeneratorConfig.{name}={getattr(cfg, name)!r} must be {bound}")


@dataclass(frozen=True)
class Catalogue:
    """The items, as arrays indexed by item id (index 0 is unused).

    rank_items: item ids from the most to the least popular.
    rank_cdf: cumulative popularity over ``rank_items``, ending at 1.
    category: each item's category. successor: each item's successor (never itself).
    """

    rank_items: np.ndarray
    rank_cdf: np.ndarray
    category: np.ndarray
    successor: np.ndarray

    def popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` item ids drawn from the popularity distribution."""
        ranks = np.searchsorted(self.rank_cdf, rng.random(n), side="right")
        return self.rank_items[np.minimum(ranks, len(self.rank_items) - 1)]


def _catalogue(cfg: GeneratorConfig) -> Catalogue:
    """Popularity ranks, categories and successors of ``cfg.n_items`` items, from ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 0])
    n = cfg.n_items
    rank_items = rng.permutation(n) + 1
    weights = np.arange(1, n + 1, dtype=np.float64) ** -cfg.zipf_exponent
    rank_cdf = np.cumsum(weights) / weights.sum()
    category = np.zeros(n + 1, dtype=np.int64)
    category[1:] = rng.permutation(n) % cfg.n_categories
    return Catalogue(rank_items, rank_cdf, category, _successors(rng, category))


def _successors(rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
    """A uniform draw, for every item, among the other items of its category."""
    by_category = np.argsort(category[1:], kind="stable") + 1
    sizes = np.bincount(category[1:])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    item_start, item_size = starts[category[1:]], sizes[category[1:]]
    picks = item_start + (rng.random(len(item_start)) * item_size).astype(np.int64)
    successor = np.zeros_like(category)
    successor[1:] = by_category[picks]
    own = np.flatnonzero(successor[1:] == np.arange(1, len(category)))  # drawn itself: take the next one
    successor[own + 1] = by_category[item_start[own] + (picks[own] - item_start[own] + 1) % item_size[own]]
    return successor


@dataclass(frozen=True)
class Chunk:
    """One file's events, sorted by user then time, with how many follow the pattern."""

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    pattern_pairs: int  # consecutive events of a user whose item is the successor of the previous one
    pairs: int  # consecutive events of a user

    def to_arrow(self):
        """The events as a pyarrow table (user_id, item_id, timestamp)."""
        return pl.DataFrame({"user_id": self.user_id, "item_id": self.item_id, "timestamp": self.timestamp}).to_arrow()


def _chunk_events(cfg: GeneratorConfig, catalogue: Catalogue, users: np.ndarray, rng: np.random.Generator) -> Chunk:
    """The events of ``users`` (user ids), drawn from ``rng``."""
    lengths = _history_lengths(cfg, rng, len(users))
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    user_of_event = np.repeat(users, lengths)
    items = _items(cfg, catalogue, rng, first, int(lengths.sum()))
    hits, pairs = successor_pairs(user_of_event, items, catalogue.successor)
    return Chunk(user_of_event, items, _timestamps(cfg, rng, first, lengths), hits, pairs)


def _history_lengths(cfg: GeneratorConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """Discretised Pareto II lengths: ``min_history + floor(scale * (U ** (-1 / tail) - 1))``,
    with the scale that gives the mean ``mean_history`` (the floor takes 0.5 off it)."""
    scale = (cfg.mean_history - cfg.min_history + 0.5) * (cfg.history_tail - 1)
    excess = np.floor(scale * ((1.0 - rng.random(n)) ** (-1.0 / cfg.history_tail) - 1.0))
    return np.minimum(cfg.min_history + excess, cfg.max_history).astype(np.int64)


def _items(cfg: GeneratorConfig, catalogue: Catalogue, rng: np.random.Generator, first: np.ndarray,
           total: int) -> np.ndarray:
    """Item ids of ``total`` events (users start at ``first``): a run starts with a
    popularity draw, and each event of the run is the successor of the one before."""
    follows = rng.random(total) < cfg.pattern_prob
    follows[first] = False
    position = np.arange(total)
    run_start = np.maximum.accumulate(np.where(follows, 0, position))
    depth = position - run_start
    items = np.zeros(total, dtype=np.int64)
    items[~follows] = catalogue.popular(rng, int(total - follows.sum()))
    by_depth = np.argsort(depth, kind="stable")
    bounds = np.cumsum(np.bincount(depth))
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # depth d reads depth d - 1, done just before
        at = by_depth[lo:hi]
        items[at] = catalogue.successor[items[at - 1]]
    return items


def _timestamps(cfg: GeneratorConfig, rng: np.random.Generator, first: np.ndarray,
                lengths: np.ndarray) -> np.ndarray:
    """Seconds, strictly increasing per user: a new session starts with probability
    ``1 / mean_session`` after ``session_gap`` on average, else ``event_gap`` on average."""
    total = int(lengths.sum())
    new_session = rng.random(total) < 1.0 / cfg.mean_session
    mean_gap = np.where(new_session, cfg.session_gap, cfg.event_gap)
    gaps = 1 + np.floor(rng.exponential(1.0, total) * mean_gap).astype(np.int64)
    gaps[first] = cfg.start_time + np.floor(rng.random(len(first)) * cfg.start_spread).astype(np.int64)
    elapsed = np.cumsum(gaps)
    return elapsed - np.repeat(elapsed[first] - gaps[first], lengths)


def successor_pairs(user_id: np.ndarray, item_id: np.ndarray, successor: np.ndarray) -> tuple[int, int]:
    """(pattern pairs, pairs) over events sorted by user then time: how many consecutive
    events of one user there are, and in how many the item is the previous item's
    successor. ``successor`` is indexed by item id (as in :func:`load_successors`)."""
    same_user = user_id[1:] == user_id[:-1]
    follows = item_id[1:] == successor[item_id[:-1]]
    return int((same_user & follows).sum()), int(same_user.sum())


def load_successors(out_dir: str | Path) -> np.ndarray:
    """The successor map of a generated folder, as an array indexed by item id."""
    table = pl.read_parquet(Path(out_dir) / SUCCESSORS_FILE)
    successor = np.zeros(int(table["item_id"].max()) + 1, dtype=np.int64)
    successor[table["item_id"].to_numpy()] = table["successor"].to_numpy()
    return successor


def _user_chunks(cfg: GeneratorConfig) -> Iterator[tuple[int, int, np.ndarray]]:
    """(partition, chunk number, user ids) for every file: partition ``p`` holds the users
    with ``user_id % n_partitions == p``, ``users_per_file`` of them per chunk."""
    step = cfg.n_partitions * cfg.users_per_file
    for part in range(cfg.n_partitions):
        first_user = part or cfg.n_partitions  # ids start at 1
        for chunk, start in enumerate(range(first_user, cfg.users + 1, step)):
            yield part, chunk, np.arange(start, min(start + step, cfg.users + 1), cfg.n_partitions)


def generate_events(out_dir: str | Path, config: GeneratorConfig = GeneratorConfig()) -> dict[str, Any]:
    """Write a synthetic log to the folder ``out_dir`` (replacing it, atomically) and
    return its metadata, also saved as ``generator.json`` there: counts, file names,
    the pattern (with its realised share of consecutive pairs) and the config."""
    catalogue = _catalogue(config)
    counts: Counter[str] = Counter()
    with atomic_dir(out_dir) as tmp:
        for part, chunk_no, users in _user_chunks(config):
            chunk = _chunk_events(config, catalogue, users, np.random.default_rng([config.seed, 1, part, chunk_no]))
            path = tmp / EVENTS_DIR / f"{PARTITION_KEY}={part:05d}" / f"chunk-{chunk_no:05d}.parquet"
            write_parquet_batches(path, [chunk.to_arrow()])
            counts.update(users=len(users), events=len(chunk.item_id), files=1, pattern_pairs=chunk.pattern_pairs,
                          pairs=chunk.pairs)
        _write_catalogue(tmp, catalogue)
        metadata = _metadata(config, counts)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    log.info("wrote %s: %d users, %d events, %d items", out_dir, counts["users"], counts["events"], config.n_items)
    return metadata


def _write_catalogue(folder: Path, catalogue: Catalogue) -> None:
    ids = np.arange(1, len(catalogue.category), dtype=np.int64)
    pl.DataFrame({"item_id": ids, "category": catalogue.category[1:]}).write_parquet(folder / ITEMS_FILE)
    pl.DataFrame({"item_id": ids, "successor": catalogue.successor[1:]}).write_parquet(folder / SUCCESSORS_FILE)


def _metadata(cfg: GeneratorConfig, counts: Counter[str]) -> dict[str, Any]:
    """What ``generator.json`` holds: counts, file names, the pattern and the config."""
    return {
        "n_users": counts["users"],
        "n_events": counts["events"],
        "n_items": cfg.n_items,
        "n_categories": cfg.n_categories,
        "n_files": counts["files"],
        "events": EVENTS_DIR,
        "partitioning": f"hive: {PARTITION_KEY}=user_id % {cfg.n_partitions}",
        "items": ITEMS_FILE,
        "pattern": {
            "kind": "successor",
            "description": "with probability `probability` an event's item is the successor (successors.parquet) "
                           "of the user's previous item; otherwise a popularity draw",
            "file": SUCCESSORS_FILE,
            "probability": cfg.pattern_prob,
            "share_of_pairs": counts["pattern_pairs"] / counts["pairs"] if counts["pairs"] else 0.0,
        },
        "config": dataclasses.asdict(cfg),
    }
