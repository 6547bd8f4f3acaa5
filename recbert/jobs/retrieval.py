"""Batch jobs for retrieval: export embeddings, build a Faiss index, and write
top-k recommendations for many users at once."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recbert.config import TrackingConfig
from recbert.data.batches import pad_sequences
from recbert.data.events import load_events
from recbert.data.sequences import Sequences, build_sequences
from recbert.data.shards import open_shards
from recbert.errors import DataError
from recbert.exports.embeddings import export_items, export_users, item_matrix, user_query_vectors
from recbert.index import IndexConfig, VectorIndex, read_embeddings_parquet, recall_at_k
from recbert.index.faiss_index import embeddings_source
from recbert.index.auto import AUTO, AutoSettings, build_auto
from recbert.io import write_parquet_batches
from recbert.model.recommender import SequenceRecommender
from recbert.data.requests import id_array, select_users
from recbert.model.checkpoint import RUN_CONFIG_FILE, load_run_config
from recbert.tracking import tracked

log = logging.getLogger("recbert.pipeline")

RETRIEVAL_EXPERIMENT = "recbert-retrieval"


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


def shard_histories(model: SequenceRecommender, model_dir: Path) -> Optional[Iterator[Sequences]]:
    """The users' full histories streamed from the sequence shards the model was trained on
    (``data.shards`` of its run config, when they are still there and hold the model's
    vocabulary), a row group at a time; None when it was not trained from shards."""
    config = load_run_config(model_dir)
    if config is None or config.data.shards is None or not Path(config.data.shards).is_dir():
        return None
    shards = open_shards(config.data.shards)
    if shards.vocab() != model.vocab:
        raise DataError(f"the shards in {shards.directory} hold another item vocabulary than the model in "
                        f"{model_dir}; pass the events file instead")
    log.info("exporting the users of the shards in %s (%d users)", shards.directory, shards.n_users)
    return shards.iter_sequences()


def run_export(model_dir: Path, what: str, out: Path, events: Optional[str] = None, normalize: bool = False,
               with_bias: bool = True, run_id: Optional[str] = None, batch_size: int = 4096,
               pooling: Optional[str] = None, tracking: Optional[TrackingConfig] = None) -> int:
    if what not in ("users", "items"):
        raise DataError(f"--what must be 'users' or 'items', got {what!r}")
    if what == "items" and pooling is not None:
        raise DataError("--pooling applies to user exports only")
    model = SequenceRecommender.from_pretrained(model_dir)
    source = {"model_dir": str(model_dir), "run_id": run_id}
    params = {"what": what, "out": str(out), "model_dir": str(model_dir), "source_run_id": run_id,
              "events": events, "normalize": normalize, "with_bias": with_bias, "pooling": pooling}
    with tracked(f"export-{what}", params, tracking) as tracker:
        started = time.perf_counter()
        if what == "items":
            n = export_items(model, out, normalize, with_bias, source)
        else:
            seqs = shard_histories(model, model_dir) if events is None else None
            if seqs is None:
                seqs = user_histories(model, model_dir, events)
            n = export_users(model, seqs, out, normalize, with_bias, batch_size, source, pooling=pooling)
        seconds = time.perf_counter() - started
        tracker.log_metrics({"rows": n, "seconds": seconds, "rows_per_s": n / max(seconds, 1e-9),
                             "file_mib": Path(out).stat().st_size / 2**20})
    return n


def run_index_build(embeddings: Path, out: Path, config: IndexConfig, overwrite: bool = False,
                    tracking: Optional[TrackingConfig] = None, auto: Optional[AutoSettings] = None,
                    queries: Optional[Path] = None, progress: Any = None) -> VectorIndex:
    """Build the index of ``config`` over an exported embeddings parquet and save it to ``out``.

    With ``auto``, the kind is chosen by measurement (:func:`recbert.index.auto.build_auto`):
    ``config`` gives the metric, device and training settings, ``queries`` (an exported
    users parquet) the held-out queries (default: held-out rows of ``embeddings``); the
    measured recall and QPS are saved in the sidecar and logged as metrics.
    """
    params = {"embeddings": str(embeddings), "out": str(out), **{f"index.{k}": v for k, v in config.to_dict().items()}}
    if auto is not None:
        params.update({"index.kind": AUTO, **{f"auto.{k}": v for k, v in asdict(auto).items()},
                       "auto.queries_file": str(queries) if queries else ""})
    if not overwrite and Path(out).exists():  # before minutes of measuring, not after
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    with tracked("index-build", params, tracking) as tracker:
        started = time.perf_counter()
        if auto is None:
            index = VectorIndex.from_parquet(embeddings, _id_column(embeddings), config=config)
        else:
            index = _build_auto_from_parquet(embeddings, config, auto, queries, progress)
        seconds = time.perf_counter() - started
        index.save(out, overwrite=overwrite)
        meta = index.source.get("recbert") if isinstance(index.source.get("recbert"), dict) else {}
        if meta.get("run_id"):
            tracker.set_tag("recbert.source_run_id", str(meta["run_id"]))
        tracker.set_tag("recbert.index_device", index.device)
        tracker.set_tag("recbert.index_kind", index.kind)
        metrics = {"count": index.count, "dim": index.dim, "build_s": seconds,
                   "index_mib": (Path(out) / "index.faiss").stat().st_size / 2**20}
        measured = index.measured
        if measured is not None:
            metrics.update({f"auto_{key}": float(measured[key])
                            for key in ("recall", "qps", "exact_qps", "speedup")})
            tracker.set_tag("recbert.timing_busy", str(bool(measured["load"]["busy"])).lower())
            tracker.log_text(json.dumps(measured, indent=2) + "\n", "index_measured.json")
        tracker.log_metrics(metrics)
    return index


def _build_auto_from_parquet(embeddings: Path, config: IndexConfig, auto: AutoSettings,
                             queries: Optional[Path], progress: Any) -> VectorIndex:
    id_column = _id_column(embeddings)
    ids, vectors, metadata = read_embeddings_parquet(embeddings, id_column)
    source = embeddings_source(embeddings, id_column, "embedding", metadata)
    query_vectors = None
    if queries is not None:
        _, query_vectors, _ = read_embeddings_parquet(queries, _id_column(queries))
        if query_vectors.shape[1] != vectors.shape[1]:
            raise DataError(f"{queries} holds vectors of dimension {query_vectors.shape[1]} but "
                            f"{embeddings} of dimension {vectors.shape[1]}: export both from one model")
        source["queries_path"] = str(queries)
    return build_auto(vectors, ids, config, auto, queries=query_vectors, source=source, progress=progress)


def _id_column(path: Path) -> str:
    names = pq.read_schema(path).names
    for name in ("item_id", "user_id"):
        if name in names:
            return name
    raise DataError(f"{path} has neither an item_id nor a user_id column (columns: {names})")


@dataclass
class BatchRecommendResult:
    users: int  # users written
    recall_at_k: Optional[float] = None  # approximate index vs exact search, on a user sample
    recall_users: int = 0


@dataclass
class ModelIndex:
    """A model and the index of its item vectors, checked to fit together."""

    model: SequenceRecommender
    index: VectorIndex
    with_bias: bool
    normalized: bool

    @classmethod
    def load(cls, model_dir: Path, index_dir: Path) -> "ModelIndex":
        model = SequenceRecommender.from_pretrained(model_dir).eval()
        index = VectorIndex.load(index_dir)
        meta = index.source.get("recbert", {}) if isinstance(index.source.get("recbert"), dict) else {}
        normalized = bool(meta.get("normalized", False))
        with_bias = bool(meta.get("bias_column", index.dim == model.config.hidden + 1))
        expected_dim = model.config.hidden + (1 if with_bias else 0)
        if index.dim != expected_dim:
            raise DataError(f"index {index_dir} has dim {index.dim}, but this model's item vectors have dim "
                            f"{expected_dim}: was it built from another model's export?")
        return cls(model, index, with_bias, normalized)

    def queries(self, rows: torch.Tensor) -> np.ndarray:
        """Query vectors for left-padded input rows (as ``inference_rows`` / ``pad_sequences`` give)."""
        return user_query_vectors(self.model, rows, self.normalized, self.with_bias)

    def seen(self, part: Sequences) -> list[np.ndarray]:
        vocab = self.model.vocab
        return [vocab.decode(r[vocab.is_item(r)]) for r in np.split(part.items, part.offsets[1:-1])]

    def rows(self, part: Sequences) -> torch.Tensor:
        return torch.from_numpy(pad_sequences(part, self.model.config.max_len, append_mask=not self.model.causal))

    def exact_index(self) -> VectorIndex:
        """An exact (flat) index over the same item vectors, for recall checks."""
        x = item_matrix(self.model, self.normalized, self.with_bias and not self.normalized)
        return VectorIndex.build(x, self.model.vocab.item_ids, IndexConfig(kind="flat", metric=self.index.metric,
                                                                            device="cpu"))


@torch.no_grad()
def run_batch_recommend(model_dir: Path, index_dir: Path, out: Path, k: int = 10,
                        users: Optional[Path] = None, events: Optional[str] = None,
                        exclude_seen: bool = True, batch_size: int = 4096,
                        recall_sample: int = 1000, seed: int = 0, run_id: Optional[str] = None,
                        tracking: Optional[TrackingConfig] = None) -> BatchRecommendResult:
    """Top-``k`` items for each user (all users of the events, or the ``user_id``
    column of ``users``) from the index, written as ``user_id, rank, item_id, score``.
    Users unknown to the events are reported and skipped. For an approximate index,
    recall@k against an exact search over the same vectors is measured on a seeded sample
    of ``recall_sample`` users (0 = skip) and logged."""
    params = {"model_dir": str(model_dir), "index": str(index_dir), "out": str(out), "k": k,
              "users": str(users) if users else None, "events": events, "exclude_seen": exclude_seen,
              "recall_sample": recall_sample, "source_run_id": run_id}
    with tracked("recommend-batch", params, tracking) as tracker:
        started = time.perf_counter()
        result = _batch_recommend(model_dir, index_dir, out, k, users, events, exclude_seen, batch_size,
                                  recall_sample, seed)
        seconds = time.perf_counter() - started
        metrics = {"users": result.users, "seconds": seconds, "users_per_s": result.users / max(seconds, 1e-9)}
        if result.recall_at_k is not None:
            metrics[f"recall_at_{k}"] = result.recall_at_k
        tracker.log_metrics(metrics)
    return result


def _batch_recommend(model_dir: Path, index_dir: Path, out: Path, k: int, users: Optional[Path],
                     events: Optional[str], exclude_seen: bool, batch_size: int, recall_sample: int,
                     seed: int) -> BatchRecommendResult:
    mi = ModelIndex.load(model_dir, index_dir)
    model, index = mi.model, mi.index
    seqs = user_histories(model, model_dir, events)
    if users is not None:
        seqs = select_users(seqs, users)
    if len(seqs) == 0:
        raise DataError("no users to recommend for")

    def tables():
        for lo in range(0, len(seqs), batch_size):
            part = seqs.select(np.arange(lo, min(lo + batch_size, len(seqs))))
            exclude = mi.seen(part) if exclude_seen else None
            scores, ids = index.search(mi.queries(mi.rows(part)), k, exclude=exclude)
            yield pa.table({
                "user_id": id_array(np.repeat(part.user_ids, k)),
                "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(part))),
                "item_id": id_array(ids.reshape(-1)),
                "score": pa.array(scores.reshape(-1).astype(np.float32)),
            })

    written = write_parquet_batches(out, tables()) // k  # k rows per user
    log.info("wrote top-%d recommendations for %d users to %s", k, written, out)
    result = BatchRecommendResult(written)
    if index.kind != "flat" and recall_sample > 0:
        pick = np.sort(np.random.default_rng(seed).choice(len(seqs), min(recall_sample, len(seqs)), replace=False))
        part = seqs.select(pick)
        q = mi.queries(mi.rows(part))
        exclude = mi.seen(part) if exclude_seen else None
        _, approx = index.search(q, k, exclude=exclude)
        _, exact = mi.exact_index().search(q, k, exclude=exclude)
        result.recall_at_k, result.recall_users = recall_at_k(approx, exact, k), len(part)
        log.info("%s index recall@%d vs exact search: %.4f (%d sampled users)", index.kind, k,
                 result.recall_at_k, len(part))
    return result


@torch.no_grad()
def run_index_query(model_dir: Path, index_dir: Path, k: int = 10, user_id: Any = None,
                    items: Optional[Sequence[Any]] = None, events: Optional[str] = None,
                    exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Top-``k`` ``(item ids, scores)`` through the index for one user's history (``user_id``,
    from ``events`` or the training events) or an ad-hoc session of ORIGINAL item ids
    (``items``, oldest first; unknown ids go through [UNK] or their hash bucket); plus a small info dict."""
    if (user_id is None) == (items is None):
        raise DataError("give exactly one of a user id or a list of item ids")
    mi = ModelIndex.load(model_dir, index_dir)
    model = mi.model
    info: dict[str, Any] = {"index": mi.index.kind, "hash_buckets": model.vocab.hash_buckets}
    if user_id is not None:
        seqs = user_histories(model, model_dir, events)
        if seqs.user_ids.dtype != object:
            try:
                user_id = int(user_id)
            except (TypeError, ValueError):
                raise DataError(f"user id {user_id!r} is not an integer, but this data's user ids are") from None
        else:
            user_id = str(user_id)
        pos = pd.Index(seqs.user_ids).get_indexer([user_id])[0]
        if pos < 0:
            raise DataError(f"user {user_id!r} has no events in the history source "
                            f"({events or 'the training events'}); pass --items for a new user's session")
        part = seqs.select(np.array([pos]))
        rows = mi.rows(part)
        tokens = part.items
        info["history_length"] = len(tokens)
    else:
        tokens = model.vocab.encode(np.asarray(list(items)))
        if len(tokens) == 0:
            raise DataError("the item list is empty")
        info["unknown_items"] = int((~model.vocab.is_item(tokens)).sum())
        rows = model.inference_rows([tokens])
        info["history_length"] = len(tokens)
    known = tokens[model.vocab.is_item(tokens)]
    exclude = [model.vocab.decode(known)] if exclude_seen else None
    scores, ids = mi.index.search(mi.queries(rows), k, exclude=exclude)
    return ids[0], scores[0], info
