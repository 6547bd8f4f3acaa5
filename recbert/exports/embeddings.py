"""Export user and item embeddings to parquet with the ORIGINAL ids.

Columns: ``item_id`` / ``user_id`` and ``embedding`` (fixed-size list of
float32); the schema metadata key ``recbert`` holds JSON (source model, run
id, dim, normalisation, scoring convention).

Scoring convention: the model scores ``user · item + bias[item]``. With
``with_bias=True`` (the default) item vectors get the bias as an extra last
coordinate and user vectors a constant 1.0, so a plain inner-product index
(``IndexFlatIP``) reproduces the model's ranking exactly. ``normalize=True``
L2-normalises instead (cosine retrieval; then the bias is left out).

User vectors are the encoder's query at the next-item slot for the user's
whole history (newest ``max_len`` events), the same vector the next-item
scorer uses. Users are encoded and written in batches: memory holds the
sequences' integer tokens, never all the vectors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from recbert.data.batches import pad_sequences
from recbert.data.sequences import Sequences
from recbert.errors import DataError
from recbert.io import atomic_path, write_parquet_batches
from recbert.model.pooling import build_pooling
from recbert.model.recommender import SequenceRecommender

log = logging.getLogger("recbert.export")


def _metadata(model: SequenceRecommender, kind: str, dim: int, normalize: bool, with_bias: bool,
              source: Optional[dict[str, Any]]) -> dict[bytes, bytes]:
    meta = {"kind": kind, "dim": dim, "normalized": normalize, "bias_column": with_bias and not normalize,
            "metric": "cosine" if normalize else "ip", "hidden": model.config.hidden,
            "n_items": model.vocab.n_items if model.vocab is not None else None, **(source or {})}
    return {b"recbert": json.dumps(meta).encode()}


def _table(ids: np.ndarray, vectors: np.ndarray, id_column: str) -> pa.Table:
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    emb = pa.FixedSizeListArray.from_arrays(flat, dim)
    id_arr = pa.array(ids.tolist() if ids.dtype == object else ids)
    return pa.table({id_column: id_arr, "embedding": emb})


def _finish(vectors: torch.Tensor, normalize: bool, with_bias: bool, extra: Optional[torch.Tensor]) -> np.ndarray:
    if normalize:
        return torch.nn.functional.normalize(vectors, dim=1).numpy()
    if with_bias:
        vectors = torch.cat([vectors, extra[:, None]], dim=1)
    return vectors.numpy()


@torch.no_grad()
def item_matrix(model: SequenceRecommender, normalize: bool = False, with_bias: bool = True) -> np.ndarray:
    """``[n_items, dim]`` float32: the vectors ``export_items`` writes, in vocabulary order."""
    vecs = model.item_vectors().detach().float().cpu()
    return _finish(vecs, normalize, with_bias, model.scorer.bias.detach().float().cpu()).astype(np.float32)


@torch.no_grad()
def user_query_vectors(model: SequenceRecommender, rows: torch.Tensor, normalize: bool = False,
                       with_bias: bool = True) -> np.ndarray:
    """``[B, dim]`` float32 user vectors for input rows (as ``pad_sequences(...,
    append_mask=not model.causal)`` gives): the scorer's query, L2-normalised or with a
    1.0 coordinate matching the items' bias column, as ``export_users`` writes them."""
    vecs = model.user_vectors(rows).float().cpu()
    return _finish(vecs, normalize, with_bias, torch.ones(len(vecs))).astype(np.float32)


@torch.no_grad()
def export_items(model: SequenceRecommender, out: str | Path, normalize: bool = False, with_bias: bool = True,
                 source: Optional[dict[str, Any]] = None) -> int:
    """Write every catalogue item's vector; returns the row count."""
    if model.vocab is None:
        raise DataError("the model has no vocabulary: load it with SequenceRecommender.from_pretrained")
    data = item_matrix(model, normalize, with_bias)
    table = _table(model.vocab.item_ids, data, "item_id")
    table = table.replace_schema_metadata(_metadata(model, "items", data.shape[1], normalize, with_bias, source))
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    log.info("exported %d item vectors (dim %d) to %s", len(table), data.shape[1], out)
    return len(table)


USER_POOLINGS = ("mean", "max", "mean_max", "last")


def _user_batches(sequences: Sequences | Iterable[Sequences], batch_size: int) -> Iterator[Sequences]:
    parts = [sequences] if isinstance(sequences, Sequences) else sequences
    for seqs in parts:
        for lo in range(0, len(seqs), batch_size):
            yield seqs.select(np.arange(lo, min(lo + batch_size, len(seqs))))


@torch.no_grad()
def export_users(model: SequenceRecommender, sequences: Sequences | Iterable[Sequences], out: str | Path,
                 normalize: bool = False,
                 with_bias: bool = True, batch_size: int = 4096, source: Optional[dict[str, Any]] = None,
                 device: torch.device | str = "cpu", pooling: Optional[str] = None) -> int:
    """Encode each user's history and stream the vectors to parquet. ``sequences``: the
    users in memory, or parts of them one after the other (e.g. the row groups of sequence
    shards, :meth:`recbert.data.shards.ShardSet.iter_sequences`), read as they come.

    ``pooling=None`` (default): the scorer's user vector (the state the next item is scored
    from; with ``with_bias`` a 1.0 coordinate matches the items' bias column, so an inner
    product index ranks as the model does). ``'mean'`` / ``'max'`` / ``'mean_max'`` /
    ``'last'``: a parameter-free masked pooling of the encoder's output over the history
    itself (no [MASK] appended), e.g. as user features for another model; no bias column.
    """
    if isinstance(sequences, Sequences) and len(sequences) == 0:
        raise DataError("no users to export")
    if pooling is not None and pooling not in USER_POOLINGS:
        raise DataError(f"user pooling must be one of {list(USER_POOLINGS)} (or none for the scorer's user "
                        f"vector), got {pooling!r}")
    model.eval()
    with_bias = with_bias and pooling is None
    pool = None
    if pooling is not None:
        pool = build_pooling("cls" if pooling == "last" else pooling, model.config.hidden, cls_position=-1)
    width = pool.out_dim if pool is not None else model.config.hidden
    dim = width + (1 if with_bias and not normalize else 0)
    meta = _metadata(model, "users", dim, normalize, with_bias, {**(source or {}), "pooling": pooling or "scorer"})

    def tables():
        for part in tqdm(_user_batches(sequences, batch_size), desc="export users", unit="batch", leave=False):
            if pool is None:
                rows = torch.from_numpy(pad_sequences(part, model.config.max_len, append_mask=not model.causal))
                vecs = user_query_vectors(model, rows.to(device), normalize, with_bias)
            else:
                rows = torch.from_numpy(pad_sequences(part, model.config.max_len)).to(device)
                enc = model(rows)
                vecs = _finish(pool(enc.sequence_output, enc.padding_mask).float().cpu(), normalize, False, None)
            yield _table(part.user_ids, vecs, "user_id")

    try:
        written = write_parquet_batches(out, tables(), meta)
    except ValueError:  # nothing came: an empty iterable of parts
        raise DataError("no users to export") from None
    log.info("exported %d user vectors (dim %d, %s) to %s", written, dim, pooling or "scorer", out)
    return written
