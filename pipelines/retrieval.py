"""Batch jobs for retrieval: export embeddings, build a Faiss index, and write
top-k recommendations for many users at once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recbert.data.batches import pad_sequences
from recbert.data.events import load_events
from recbert.data.sequences import Sequences, build_sequences
from recbert.data.vocab import N_SPECIAL
from recbert.errors import DataError
from recbert.exports.embeddings import export_items, export_users
from recbert.index import IndexConfig, VectorIndex
from recbert.io import atomic_path
from recbert.model.recommender import SequenceRecommender
from pipelines.train import RUN_CONFIG_FILE, load_run_config

log = logging.getLogger("recbert.pipeline")


def user_histories(model: SequenceRecommender, model_dir: Path, events: Optional[str] = None) -> Sequences:
    """Every user's full history from ``events`` (default: the events the model
    was trained on), encoded with the model's own vocabulary."""
    config = load_run_config(model_dir)
    d = config.data if config else None
    source = events or (d.events if d else None)
    if source is None:
        raise DataError(f"{model_dir} has no {RUN_CONFIG_FILE}: pass the events file")
    cols = (d.user_col, d.item_col, d.time_col) if d and events is None else ("user_id", "item_id", "timestamp")
    return build_sequences(load_events(source, *cols), model.vocab, min_user_events=1)


def run_export(model_dir: Path, what: str, out: Path, events: Optional[str] = None, normalize: bool = False,
               with_bias: bool = True, run_id: Optional[str] = None, batch_size: int = 4096) -> int:
    model = SequenceRecommender.from_pretrained(model_dir)
    source = {"model_dir": str(model_dir), "run_id": run_id}
    if what == "items":
        return export_items(model, out, normalize, with_bias, source)
    if what == "users":
        seqs = user_histories(model, model_dir, events)
        return export_users(model, seqs, out, normalize, with_bias, batch_size, source)
    raise DataError(f"--what must be 'users' or 'items', got {what!r}")


def run_index_build(embeddings: Path, out: Path, config: IndexConfig, overwrite: bool = False) -> VectorIndex:
    index = VectorIndex.from_parquet(embeddings, _id_column(embeddings), config=config)
    index.save(out, overwrite=overwrite)
    return index


def _id_column(path: Path) -> str:
    names = pq.read_schema(path).names
    for name in ("item_id", "user_id"):
        if name in names:
            return name
    raise DataError(f"{path} has neither an item_id nor a user_id column (columns: {names})")


@torch.no_grad()
def run_batch_recommend(model_dir: Path, index_dir: Path, out: Path, k: int = 10,
                        users: Optional[Path] = None, events: Optional[str] = None,
                        exclude_seen: bool = True, batch_size: int = 4096) -> int:
    """Top-``k`` items for each user (all users of the events, or the ``user_id``
    column of ``users``) from the index, written as ``user_id, rank, item_id, score``.
    Users unknown to the events are reported and skipped."""
    model = SequenceRecommender.from_pretrained(model_dir)
    index = VectorIndex.load(index_dir)
    meta = index.source.get("recbert", {}) if isinstance(index.source.get("recbert"), dict) else {}
    with_bias = bool(meta.get("bias_column", index.dim == model.config.hidden + 1))
    expected_dim = model.config.hidden + (1 if with_bias else 0)
    if index.dim != expected_dim:
        raise DataError(f"index {index_dir} has dim {index.dim}, but this model's item vectors have dim "
                        f"{expected_dim}: was it built from another model's export?")
    seqs = user_histories(model, model_dir, events)
    if users is not None:
        wanted = pl.read_parquet(users, columns=["user_id"])["user_id"].to_numpy()
        pos = pd.Index(seqs.user_ids).get_indexer(wanted)
        unknown = int((pos < 0).sum())
        if unknown:
            log.warning("%d of %d requested users have no events and are skipped", unknown, len(wanted))
        seqs = seqs.select(pos[pos >= 0])
    if len(seqs) == 0:
        raise DataError("no users to recommend for")
    model.eval()
    written = 0
    with atomic_path(out) as tmp:
        writer = None
        try:
            for lo in range(0, len(seqs), batch_size):
                part = seqs.select(np.arange(lo, min(lo + batch_size, len(seqs))))
                rows = torch.from_numpy(pad_sequences(part, model.config.max_len, append_mask=not model.causal))
                q = model.user_vectors(rows)
                if with_bias:
                    q = torch.cat([q, torch.ones(len(q), 1)], dim=1)
                exclude = None
                if exclude_seen:
                    exclude = [model.vocab.decode(r[r >= N_SPECIAL]) for r in np.split(part.items, part.offsets[1:-1])]
                scores, ids = index.search(q.numpy(), k, exclude=exclude)
                n = len(part)
                table = pa.table({
                    "user_id": pa.array(np.repeat(part.user_ids, k).tolist() if part.user_ids.dtype == object
                                        else np.repeat(part.user_ids, k)),
                    "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
                    "item_id": pa.array(ids.reshape(-1).tolist() if ids.dtype == object else ids.reshape(-1)),
                    "score": pa.array(scores.reshape(-1).astype(np.float32)),
                })
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                written += n
        finally:
            if writer is not None:
                writer.close()
    log.info("wrote top-%d recommendations for %d users to %s", k, written, out)
    return written

