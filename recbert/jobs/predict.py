"""Score users with a saved fine-tuned head (``recbert predict``).

* classifier heads: one row per user with ``user_id``, ``prediction`` (the class name saved
  in the head's metadata, else the class index), ``probability`` (of that class) and
  ``proba`` (all class probabilities; binary heads: [P(class 0), P(class 1)]);
* CTR heads: one row per (user, candidate) pair of ``pairs`` with ``user_id``, ``item_id``,
  ``click_proba``; the history is the user's events in time order (the newest ``window``).

Histories come from an events parquet; users without events are reported and skipped;
candidate items unknown to the model's vocabulary are scored through [UNK] (or their hash
bucket) and counted.
The output is streamed in batches and written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import torch

from recbert.data.batches import pad_sequences
from recbert.data.events import load_events
from recbert.data.sequences import Sequences, build_sequences
from recbert.errors import DataError
from recbert.heads import CTRModel, SequenceClassifier, load_head
from recbert.io import write_parquet_batches
from recbert.data.requests import id_array, read_columns, select_users, user_positions

log = logging.getLogger("recbert.predict")


@torch.no_grad()
def run_predict(head_dir: Path, events: str, out: Path, users: Optional[Path] = None,
                pairs: Optional[Path] = None, batch_size: int = 1024,
                columns: tuple[str, str, str] = ("user_id", "item_id", "timestamp")) -> int:
    """Write predictions of the head saved in ``head_dir``; returns the number of rows."""
    model = load_head(head_dir)
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    window = int(model.metadata.get("window") or model.model_config.max_len)
    seqs = build_sequences(load_events(events, *columns), model.vocab, min_user_events=1)
    if isinstance(model, SequenceClassifier):
        if pairs is not None:
            raise DataError(f"{head_dir} holds a classifier: it takes --users (or all users), not --pairs")
        return _predict_classes(model, seqs, users, out, window, batch_size)
    if isinstance(model, CTRModel):
        if pairs is None:
            raise DataError(f"{head_dir} holds a CTR model: give --pairs, a parquet of (user_id, item_id) candidates")
        return _predict_clicks(model, seqs, pairs, out, window, batch_size)
    raise DataError(f"{head_dir} holds a {type(model).__name__}, which recbert predict does not handle")


def _predict_classes(model: SequenceClassifier, seqs: Sequences, users: Optional[Path], out: Path,
                     window: int, batch_size: int) -> int:
    if users is not None:
        seqs = select_users(seqs, users)
    if len(seqs) == 0:
        raise DataError("no users to predict for")
    classes = model.metadata.get("classes")
    n_out = 2 if model.head_config.task == "binary" else model.head_config.n_classes
    if classes is not None and len(classes) != n_out:
        raise DataError(f"the head's metadata names {len(classes)} classes but it predicts {n_out}")

    def tables():
        for lo in range(0, len(seqs), batch_size):
            part = seqs.select(np.arange(lo, min(lo + batch_size, len(seqs))))
            p = model.predict_proba(torch.from_numpy(pad_sequences(part, window))).numpy()
            if model.head_config.task == "binary":
                p = np.stack([1 - p, p], axis=1)
            best = p.argmax(1) if model.head_config.task != "multilabel" else None
            cols = {"user_id": id_array(part.user_ids)}
            if best is not None:
                cols["prediction"] = pa.array([classes[i] for i in best] if classes is not None else best)
                cols["probability"] = pa.array(p[np.arange(len(p)), best].astype(np.float32))
            cols["proba"] = pa.FixedSizeListArray.from_arrays(pa.array(p.astype(np.float32).reshape(-1)), p.shape[1])
            yield pa.table(cols)

    n = write_parquet_batches(out, tables())
    log.info("wrote predictions for %d users to %s", n, out)
    return n


def _predict_clicks(model: CTRModel, seqs: Sequences, pairs: Path, out: Path, window: int, batch_size: int) -> int:
    df = read_columns(pairs, ["user_id", "item_id"])
    pos = user_positions(seqs, df["user_id"].to_numpy(), "candidate rows' users")
    keep = np.flatnonzero(pos >= 0)
    if len(keep) == 0:
        raise DataError(f"none of the users in {pairs} has events")
    items = df["item_id"].to_numpy()[keep]
    tokens = model.vocab.encode(items)
    unknown = int((~model.vocab.is_item(tokens)).sum())
    if unknown:
        log.warning("%d of %d candidate items are unknown to the model and scored as %s", unknown, len(tokens),
                    "their hash buckets" if model.vocab.hash_buckets else "[UNK]")
    users = df["user_id"].to_numpy()[keep]

    def tables():
        for lo in range(0, len(keep), batch_size):
            sl = slice(lo, lo + batch_size)
            hist = seqs.select(pos[keep[sl]])
            rows = torch.from_numpy(pad_sequences(hist, window))
            p = model.predict_proba(rows, torch.from_numpy(tokens[sl].astype(np.int64))).numpy()
            yield pa.table({"user_id": id_array(users[sl]), "item_id": id_array(items[sl]),
                            "click_proba": pa.array(p.astype(np.float32))})

    n = write_parquet_batches(out, tables())
    log.info("wrote %d click probabilities to %s", n, out)
    return n
