"""A faiss index over exported embeddings, with its ids, a checksummed sidecar and safe I/O.

Faiss only stores positions ``0..n-1``; the original ids (ints or strings) live in a
separate array (``ids.parquet`` on disk), so string ids work for every index kind.

Search results are ``(scores, ids)``, both ``[m, k]``, best first, where *higher score is
always better*: inner product for ``ip``, cosine similarity for ``cosine`` and the
*negated* squared Euclidean distance for ``l2``. Slots that could not be filled (an
approximate index found fewer than ``k`` candidates, or exclusions removed too many) have
score ``-inf`` and id :data:`PAD_ID` (``-1``) for integer ids or ``None`` for string ids;
``-1`` is therefore not allowed as an integer id.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbert.digest import file_sha256
from recbert.index import device as _device
from recbert.index.spec import (
    INDEX_KINDS,
    IndexConfig,
    IndexConfigError,
    IndexDeviceError,
    IndexFileError,
    IndexFileMissingError,
    IndexInputError,
    METRICS,
    faiss_metric_name,
    kinds_where,
    quantizer_ef_search,
)
from recbert.io import atomic_dir

logger = logging.getLogger("recbert.index")

PAD_ID = -1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
SIDECAR_FILE = "index.json"
FORMAT = "recbert.index"
FORMAT_VERSION = 1
# Faiss GPU k-selection handles at most this many results (and nprobe values) per query.
GPU_MAX_K = 2048

_FAISS_METRIC = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class VectorIndex:
    """A faiss index plus the ids of its vectors. Create with :meth:`build`,
    :meth:`from_parquet` or :meth:`load`; the constructor is internal."""

    def __init__(
        self,
        index: Any,
        ids: np.ndarray,
        config: IndexConfig,
        *,
        device: str,
        source: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
        measured: dict[str, Any] | None = None,
    ) -> None:
        self._index = index
        self._ids = ids
        self._config = config
        self._device = device
        self._source = dict(source or {})
        self._info = dict(info or {})
        self._measured = dict(measured) if measured is not None else None

    # --- properties -------------------------------------------------------------------

    @property
    def config(self) -> IndexConfig:
        """The effective configuration (automatic ``nlist``/``pq_m`` resolved)."""
        return self._config

    @property
    def kind(self) -> str:
        return self._config.kind

    @property
    def metric(self) -> str:
        return self._config.metric

    @property
    def dim(self) -> int:
        """The dimension of the vectors and queries (without an ``ip_to_l2`` extra coordinate)."""
        return int(self._index.d) - (1 if self._config.ip_to_l2 else 0)

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @property
    def device(self) -> str:
        """``cpu`` or ``gpu``: where the faiss index lives."""
        return self._device

    @property
    def ids(self) -> np.ndarray:
        """Original ids by faiss position (int64, or object array of ``str``)."""
        return self._ids

    @property
    def id_dtype(self) -> str:
        return "string" if self._ids.dtype == object else "int64"

    @property
    def source(self) -> dict[str, Any]:
        return dict(self._source)

    @property
    def info(self) -> dict[str, Any]:
        """Sidecar fields of a loaded index (faiss version, created-at, checksums)."""
        return dict(self._info)

    @property
    def measured(self) -> dict[str, Any] | None:
        """What was measured on this index when it was chosen (``recbert index build --kind
        auto``, :func:`recbert.index.auto.build_auto`): recall@k against exact search on
        held-out queries, batch QPS (median of repeats), the exact index's QPS, the search
        value, the candidates tried and the machine's load. Saved in the sidecar;
        ``None`` when nothing was measured."""
        return None if self._measured is None else dict(self._measured)

    def set_measured(self, measured: dict[str, Any] | None) -> None:
        """Attach (JSON-serialisable) measurements to be saved with the index."""
        if measured is not None:
            try:
                json.dumps(measured)
            except (TypeError, ValueError) as exc:
                raise IndexInputError(f"measured values must be JSON-serialisable: {exc}") from exc
        self._measured = None if measured is None else dict(measured)

    def set_search_default(self, value: int) -> None:
        """Make ``value`` the kind's search-time parameter (``nprobe`` / ``ef_search``) used when
        :meth:`search` is not given one; it is saved with the index."""
        param = INDEX_KINDS[self.kind].search
        if param is None:
            raise IndexInputError(f"a {self.kind!r} index has no search-time parameter")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise IndexInputError(f"{param.name}={value!r} must be a positive integer")
        cfg = self._config.replace(**{param.name: param.effective(self._config, int(value))})
        target = _device.index_to_cpu(self._index) if self._device == "gpu" else self._index
        _store_search_default(target, cfg)
        if self._device == "gpu":
            self._index = _device.index_to_gpu(target)
        self._config = cfg

    @property
    def faiss_index(self) -> Any:
        return self._index

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (
            f"VectorIndex(kind={self.kind!r}, metric={self.metric!r}, dim={self.dim}, "
            f"count={self.count}, id_dtype={self.id_dtype!r}, device={self.device!r})"
        )

    # --- building ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Any,
        config: IndexConfig | None = None,
        source: dict[str, Any] | None = None,
    ) -> VectorIndex:
        """Build an index over ``vectors`` (``[n, d]``, converted to float32) with ``ids``.

        ``source`` is free JSON-serialisable metadata (run id, model dir, ...) that is
        written to the sidecar by :meth:`save`.
        """
        cfg = config if config is not None else IndexConfig()
        if not isinstance(cfg, IndexConfig):
            raise IndexConfigError(f"config must be an IndexConfig, not {type(cfg).__name__}")
        started = time.perf_counter()
        x = _prepare_vectors(vectors, cfg.metric, what="vectors")
        n, d = x.shape
        id_array = _prepare_ids(ids, n)
        source = _check_source(source)
        where = _device.resolve_device(cfg.device)
        if cfg.ip_to_l2:
            x, cfg = _augment_items(x, cfg)

        index, cfg = _new_index(cfg, n, x.shape[1])
        if INDEX_KINDS[cfg.kind].ivf:
            _train(index, x, cfg)
        if where == "gpu":
            index, where = _move_to_gpu(index, cfg)
        index.add(x)
        logger.info(
            "built %s index (metric=%s, n=%d, dim=%d, device=%s) in %.1fs",
            cfg.kind, cfg.metric, n, d, where, time.perf_counter() - started,
        )
        return cls(index, id_array, cfg, device=where, source=source)

    @classmethod
    def from_parquet(
        cls,
        path: str | Path,
        id_column: str,
        vector_column: str = "embedding",
        config: IndexConfig | None = None,
        *,
        source: dict[str, Any] | None = None,
        batch_rows: int = 65_536,
    ) -> VectorIndex:
        """Build from an exported embeddings parquet (``id_column`` + a list-of-float column).

        The file's ``recbert`` schema metadata (JSON), if any, is copied into
        ``source['recbert']`` along with the path and column names; ``source`` entries
        passed here win.
        """
        ids, vectors, metadata = read_embeddings_parquet(
            path, id_column, vector_column, batch_rows=batch_rows
        )
        merged = {**embeddings_source(path, id_column, vector_column, metadata), **(source or {})}
        return cls.build(vectors, ids, config, source=merged)

    def add(self, vectors: np.ndarray, ids: Any) -> None:
        """Add ``vectors`` with new ``ids`` (same id type, none already indexed) to a built
        index; IVF kinds use their trained cells, HNSW inserts into its graph."""
        x = _prepare_vectors(vectors, self.metric, what="vectors")
        if x.shape[1] != self.dim:
            raise IndexInputError(
                f"vectors have dimension {x.shape[1]} but the index has dimension {self.dim}"
            )
        new_ids = _prepare_ids(ids, x.shape[0])
        if (new_ids.dtype == object) != (self._ids.dtype == object):
            raise IndexInputError(f"ids are {'strings' if new_ids.dtype == object else 'integers'} "
                                  f"but the index holds {self.id_dtype} ids")
        clash = set(new_ids.tolist()).intersection(self._ids.tolist())
        if clash:
            shown = ", ".join(repr(v) for v in sorted(clash)[:5])
            raise IndexInputError(f"{len(clash)} ids are already in the index, e.g. {shown}")
        if self._config.ip_to_l2:
            bound = float(self._config.max_norm)
            x, widened = _augment_items(x, self._config)
            if widened.max_norm > bound * (1 + 1e-6):
                raise IndexInputError(
                    f"vectors of norm up to {widened.max_norm:.4g} exceed the ip_to_l2 index's "
                    f"max_norm {bound:.4g}: the MIPS-to-NN reduction needs every item within it; "
                    f"rebuild the index with all the vectors"
                )
        self._index.add(x)
        self._ids = np.concatenate([self._ids, new_ids])

    # --- searching --------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Iterable[Any] | None] | None = None,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        batch_size: int = 4096,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best items for each query: ``(scores [m, k] float32, ids [m, k])``.

        ``queries`` is ``[m, d]`` (a 1-D vector is one query). ``k`` must be between 1 and
        the index size. ``exclude[i]`` holds ids never returned for query ``i`` (e.g. items
        the user already saw); ``k + len(exclude[i])`` candidates are retrieved so that
        ``k`` results remain whenever the index can supply them. Unfilled slots: score
        ``-inf``, id ``-1`` (int ids) or ``None`` (string ids). Tied scores come in index
        order (the order the vectors were added), deterministically. ``nprobe`` (IVF kinds) and
        ``ef_search`` (HNSW) override the configured values for this call only.
        """
        q = _prepare_vectors(queries, self.metric, what="queries", allow_1d=True)
        if q.shape[1] != self.dim:
            raise IndexInputError(
                f"queries have dimension {q.shape[1]} but the index has dimension {self.dim}"
            )
        m, n = q.shape[0], self.count
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise IndexInputError(f"k={k!r} must be a positive integer")
        k = int(k)
        if k > n:
            raise IndexInputError(f"k={k} is larger than the number of indexed vectors n={n}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise IndexInputError(f"batch_size={batch_size!r} must be a positive integer")
        excluded = _prepare_exclude(exclude, m)
        params = self._search_params(nprobe, ef_search)

        string_ids = self._ids.dtype == object
        out_scores = np.full((m, k), -np.inf, dtype=np.float32)
        out_ids = np.full((m, k), None if string_ids else PAD_ID,
                          dtype=object if string_ids else np.int64)
        # equal blocks: a short trailing block could fall into faiss' slow non-BLAS loop (exact
        # search of 1,808 queries over 1M vectors ran at ~180 QPS, of 2,000+ at ~1,000), which
        # recbert.index.blas now keeps for batches of under ~20 queries only
        blocks = math.ceil(m / int(batch_size))
        step = math.ceil(m / blocks)
        for start in range(0, m, step):
            stop = min(m, start + step)
            extra = max((len(s) for s in excluded[start:stop] if s), default=0)
            kk = min(k + extra, n)
            if self._device == "gpu" and kk > GPU_MAX_K:
                raise IndexInputError(
                    f"k={k} plus {extra} excluded ids needs {kk} results per query; faiss on "
                    f"GPU returns at most {GPU_MAX_K} (load the index with device='cpu')"
                )
            block = q[start:stop]
            scores, positions = self._index.search(self.faiss_queries(block), kk, params=params)
            if self._config.ip_to_l2:
                sq = np.einsum("ij,ij->i", q[start:stop], q[start:stop])[:, None]
                scores = (sq + float(self._config.max_norm) ** 2 - scores) / 2
            elif self.metric == "l2":
                scores = -scores
            found = positions >= 0
            scores = np.where(found, scores, -np.inf).astype(np.float32, copy=False)
            # ties in index order, as the model's own recommend() does (faiss leaves them unordered)
            order = np.lexsort((np.where(found, positions, n), -scores), axis=1)
            scores, positions = np.take_along_axis(scores, order, 1), np.take_along_axis(positions, order, 1)
            found = positions >= 0
            ids = self._ids[np.where(found, positions, 0)]
            ids[~found] = None if string_ids else PAD_ID
            if extra == 0:
                out_scores[start:stop] = scores[:, :k]
                out_ids[start:stop] = ids[:, :k]
                continue
            for row in range(stop - start):
                skip = excluded[start + row]
                if not skip:
                    out_scores[start + row] = scores[row, :k]
                    out_ids[start + row] = ids[row, :k]
                    continue
                keep = found[row] & np.fromiter(
                    (i not in skip for i in ids[row].tolist()), dtype=bool, count=kk
                )
                kept = np.flatnonzero(keep)[:k]
                out_scores[start + row, : len(kept)] = scores[row, kept]
                out_ids[start + row, : len(kept)] = ids[row, kept]
        return out_scores, out_ids

    def faiss_queries(self, q: np.ndarray) -> np.ndarray:
        """Prepared queries as the faiss index takes them: ``[q, 0]`` on the MIPS-to-NN
        reduction (``|q - x'|^2 = |q|^2 + M^2 - 2 q.x``), else unchanged."""
        if not self._config.ip_to_l2:
            return q
        return np.hstack([q, np.zeros((len(q), 1), dtype=np.float32)])

    def quantizer_params(self, nprobe: int) -> Any:
        """Search parameters of an HNSW coarse quantizer for ``nprobe`` cells (its beam,
        :func:`quantizer_ef_search`); ``None`` for the exact quantizer and non-IVF kinds."""
        if self._config.quantizer != "hnsw":
            return None
        return faiss.SearchParametersHNSW(efSearch=quantizer_ef_search(nprobe))

    def _search_params(self, nprobe: int | None, ef_search: int | None) -> Any:
        """Faiss search parameters for this call's overrides; ``None`` keeps the index's defaults."""
        overrides = {"nprobe": nprobe, "ef_search": ef_search}
        for name, value in overrides.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
            ):
                raise IndexInputError(f"{name}={value!r} must be a positive integer")
        param = INDEX_KINDS[self.kind].search
        for name, value in overrides.items():
            if value is not None and (param is None or param.name != name):
                kinds = "/".join(_kinds_searched_with(name))
                raise IndexInputError(f"{name} applies to {kinds} indexes, not {self.kind!r}")
        requested = overrides[param.name] if param is not None else None
        if requested is None:
            return None
        value = param.effective(self._config, requested)
        if self._device == "gpu" and value > GPU_MAX_K:
            raise IndexInputError(
                f"{param.name}={requested} exceeds the faiss GPU limit {GPU_MAX_K}"
            )
        params = getattr(faiss, param.faiss_params)(**{param.faiss_name: value})
        inner = self.quantizer_params(value)
        if inner is not None:
            params.quantizer_params = inner
            params._recbert_keep = inner  # the C++ side holds a raw pointer: keep it alive
        if self._config.rerank:
            return faiss.IndexRefineSearchParameters(k_factor=float(self._config.rerank),
                                                     base_index_params=params)
        return params

    # --- persistence ------------------------------------------------------------------

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``index.faiss``, ``ids.parquet`` and ``index.json`` to ``directory``.

        Everything is written into a temporary directory beside the target, which is then
        renamed into place, so a crash never leaves a half-written index behind.
        """
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise IndexFileError(f"cannot save index to {target}: it exists and is not a directory")
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
        cpu_index = _device.index_to_cpu(self._index) if self._device == "gpu" else self._index
        with atomic_dir(target) as tmp:
            faiss.write_index(cpu_index, str(tmp / INDEX_FILE))
            id_type = pa.string() if self._ids.dtype == object else pa.int64()
            table = pa.table({"id": pa.array(self._ids, type=id_type)})
            pq.write_table(table, tmp / IDS_FILE)
            sidecar = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "metric": self.metric,
                "faiss_metric": "l2" if self._config.ip_to_l2 else faiss_metric_name(self.metric),
                "faiss_index_type": type(cpu_index).__name__,
                "dim": self.dim,
                "count": self.count,
                "id_dtype": self.id_dtype,
                "config": self._config.to_dict(),
                "source": self._source,
                "faiss_version": faiss.__version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "built_on": self._info.get("built_on", self._device),
                "measured": self._measured,
                "files": {
                    name: {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                    for name in (INDEX_FILE, IDS_FILE)
                },
            }
            (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        logger.info("saved %r to %s", self, target)
        return target

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str = "auto",
        *,
        expect_dim: int | None = None,
        expect_metric: str | None = None,
        verify_checksums: bool = True,
    ) -> VectorIndex:
        """Load an index written by :meth:`save`, checking it against its sidecar.

        ``expect_dim`` / ``expect_metric`` are what the model that produces queries uses;
        a mismatch raises :class:`IndexFileError` before the index file is read.
        """
        root = Path(directory)
        if not root.is_dir():
            raise IndexFileMissingError(f"index directory {root} does not exist")
        sidecar_path = root / SIDECAR_FILE
        if not sidecar_path.is_file():
            raise IndexFileMissingError(
                f"{sidecar_path} is missing: {root} is not a saved recbert index "
                f"(or its save did not finish)"
            )
        meta = _read_sidecar(sidecar_path)
        if expect_metric is not None and expect_metric not in METRICS:
            raise IndexConfigError(f"expect_metric={expect_metric!r} is not one of {METRICS}")
        if expect_dim is not None and int(expect_dim) != meta["dim"]:
            raise IndexFileError(
                f"index at {root} was built for dim {meta['dim']} but the model produces "
                f"dim {int(expect_dim)}; rebuild the index from this model's embeddings"
            )
        if expect_metric is not None and expect_metric != meta["metric"]:
            raise IndexFileError(
                f"index at {root} was built with metric {meta['metric']!r} but "
                f"{expect_metric!r} is expected; rebuild the index with metric={expect_metric!r}"
            )
        for name in (INDEX_FILE, IDS_FILE):
            path = root / name
            if not path.is_file():
                raise IndexFileMissingError(f"{path} is missing (listed in {sidecar_path})")
            if verify_checksums:
                actual = file_sha256(path)
                expected = meta["files"][name]["sha256"]
                if actual != expected:
                    raise IndexFileError(
                        f"{name} checksum {actual[:16]}... does not match index.json — "
                        f"rebuilt or corrupted (index.json lists {expected[:16]}...): {path}"
                    )
        try:
            index = faiss.read_index(str(root / INDEX_FILE))
        except RuntimeError as exc:
            raise IndexFileError(f"faiss cannot read {root / INDEX_FILE}: {exc}") from exc
        augmented = bool((meta.get("config") or {}).get("ip_to_l2", False))
        faiss_metric = _FAISS_METRIC["l2" if augmented else faiss_metric_name(meta["metric"])]
        checks = (
            ("dim", int(index.d) - (1 if augmented else 0), meta["dim"]),
            ("count", int(index.ntotal), meta["count"]),
            ("metric_type", int(index.metric_type), int(faiss_metric)),
        )
        for what, got, want in checks:
            if got != want:
                raise IndexFileError(
                    f"{root / INDEX_FILE} has {what}={got} but index.json says {want}"
                )
        ids = _read_ids(root / IDS_FILE, meta)
        if len(ids) != index.ntotal:
            raise IndexFileError(
                f"{root / IDS_FILE} holds {len(ids)} ids but the index holds {index.ntotal} vectors"
            )
        try:
            config = IndexConfig.from_dict({**meta["config"], "device": device})
        except IndexConfigError as exc:
            raise IndexFileError(f"{sidecar_path} has an invalid config: {exc}") from exc
        _store_search_default(index, config)
        where = _device.resolve_device(device)
        if where == "gpu":
            index, where = _move_to_gpu(index, config)
        info = {k: meta.get(k) for k in ("faiss_version", "created_at", "built_on", "files")}
        measured = meta.get("measured")
        if measured is not None and not isinstance(measured, dict):
            raise IndexFileError(f"{sidecar_path}: 'measured' must be an object, not {type(measured).__name__}")
        return cls(index, ids, config, device=where, source=meta.get("source") or {}, info=info,
                   measured=measured)


# --- helpers: building ----------------------------------------------------------------


def _new_index(cfg: IndexConfig, n: int, d: int) -> tuple[Any, IndexConfig]:
    """An empty (untrained) CPU faiss index and the config with automatic values resolved."""
    metric = _FAISS_METRIC["l2" if cfg.ip_to_l2 else faiss_metric_name(cfg.metric)]
    index, resolved = INDEX_KINDS[cfg.kind].build(cfg, n, d, metric)
    _store_search_default(index, resolved)
    if cfg.rerank:
        # the wrapper trains / adds to the PQ index and keeps the raw vectors for re-ranking
        refined = faiss.IndexRefineFlat(index)
        refined.k_factor = float(cfg.rerank)
        return refined, resolved
    return index, resolved


def _kinds_searched_with(name: str) -> tuple[str, ...]:
    """The registered kinds whose search-time parameter is ``name``."""
    return kinds_where(lambda spec: spec.search is not None and spec.search.name == name)


def _store_search_default(index: Any, cfg: IndexConfig) -> None:
    """Make the configured search-time value (e.g. ``nprobe``) the CPU faiss index's default
    (and an HNSW coarse quantizer's beam width, to match it)."""
    param = INDEX_KINDS[cfg.kind].search
    if param is not None:
        value = param.effective(cfg, getattr(cfg, param.name))
        space = faiss.ParameterSpace()
        space.set_index_parameter(index, param.faiss_name, value)
        if cfg.quantizer == "hnsw":
            space.set_index_parameter(index, "quantizer_efSearch", quantizer_ef_search(value))


def _augment_items(x: np.ndarray, cfg: IndexConfig) -> tuple[np.ndarray, IndexConfig]:
    """Items ``[x, sqrt(M^2 - |x|^2)]`` (all of norm ``M``) for the MIPS-to-NN reduction;
    ``M`` is the largest norm, or the configured ``max_norm`` when that is larger."""
    sq = np.einsum("ij,ij->i", x, x)
    max_norm = float(np.sqrt(sq.max())) if len(sq) else 1.0
    # a configured max_norm is kept when it bounds these vectors (vectors may be added later)
    max_norm = max(max_norm, cfg.max_norm or 0.0, 1e-12)
    extra = np.sqrt(np.maximum(max_norm ** 2 - sq, 0.0)).astype(np.float32)[:, None]
    return np.hstack([x, extra]), cfg.replace(max_norm=max_norm)


def _train(index: Any, x: np.ndarray, cfg: IndexConfig) -> None:
    n = x.shape[0]
    if n > cfg.train_sample:
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(n, size=cfg.train_sample, replace=False))
        sample = x[rows]
    else:
        sample = x
    started = time.perf_counter()
    index.train(sample)
    logger.info(
        "trained %s (nlist=%s) on %d of %d vectors in %.1fs",
        cfg.kind, cfg.nlist, sample.shape[0], n, time.perf_counter() - started,
    )


def _move_to_gpu(index: Any, cfg: IndexConfig) -> tuple[Any, str]:
    if not INDEX_KINDS[cfg.kind].gpu:
        logger.info("faiss has no GPU %s: the %s index stays on CPU", cfg.kind.upper(), cfg.kind)
        return index, "cpu"
    if cfg.rerank:
        logger.info("exact re-ranking (rerank=%d) runs on CPU: the %s index stays on CPU",
                    cfg.rerank, cfg.kind)
        return index, "cpu"
    try:
        moved = _device.index_to_gpu(index)
    except Exception as exc:
        if cfg.device == "gpu":
            raise IndexDeviceError(
                f"could not move the {cfg.kind} index to the GPU: {exc}"
            ) from exc
        logger.warning("could not move the %s index to the GPU (%s); using CPU", cfg.kind, exc)
        return index, "cpu"
    return moved, "gpu"


def _prepare_vectors(
    vectors: Any, metric: str, *, what: str, allow_1d: bool = False
) -> np.ndarray:
    x = np.asarray(vectors)
    if allow_1d and x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise IndexInputError(f"{what} must be a 2-D array [n, dim], got shape {x.shape}")
    if x.shape[0] == 0:
        raise IndexInputError(f"{what} is empty (shape {x.shape})")
    if x.shape[1] == 0:
        raise IndexInputError(f"{what} have dimension 0 (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise IndexInputError(f"{what} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        n_nan = int(np.isnan(x).sum())
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise IndexInputError(
            f"{what} contain {n_nan} NaN and {int((~finite).sum()) - n_nan} infinite values "
            f"in {len(bad_rows)} rows (first bad row: {int(bad_rows[0])})"
        )
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
        zero = np.flatnonzero(norms == 0)
        if len(zero):
            raise IndexInputError(
                f"{what} contain {len(zero)} all-zero rows (first: {int(zero[0])}); "
                f"cosine similarity is undefined for them"
            )
        x = x / norms[:, None]
    return x


def _prepare_ids(ids: Any, n: int) -> np.ndarray:
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if ids.null_count:
            raise IndexInputError(f"ids contain {ids.null_count} nulls")
        ids = ids.to_numpy(zero_copy_only=False)
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise IndexInputError(f"ids must be 1-D, got shape {arr.shape}")
    if len(arr) != n:
        raise IndexInputError(f"ids has {len(arr)} entries but vectors has {n} rows")
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and len(arr) and arr.max() > np.iinfo(np.int64).max:
            raise IndexInputError("integer ids must fit in int64")
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "U":
        out = arr.astype(object)
    elif arr.dtype.kind == "O":
        if all(isinstance(v, str) for v in arr):
            out = arr.copy()
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
            try:
                out = arr.astype(np.int64)
            except OverflowError as exc:
                raise IndexInputError("integer ids must fit in int64") from exc
        else:
            kinds = sorted({type(v).__name__ for v in arr})
            raise IndexInputError(f"ids must be all ints or all strings, got {', '.join(kinds)}")
    else:
        raise IndexInputError(f"ids must be integers or strings, got dtype {arr.dtype}")

    if out.dtype == np.int64:
        if (out == PAD_ID).any():
            raise IndexInputError(f"id {PAD_ID} is reserved for padding search results")
        ordered = np.sort(out)
        dups = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        dup_list = dups.tolist()
    else:
        if len(set(out.tolist())) == len(out):
            dup_list = []
        else:
            dup_list = sorted(v for v, c in collections.Counter(out.tolist()).items() if c > 1)
    if dup_list:
        shown = ", ".join(repr(v) for v in dup_list[:5])
        raise IndexInputError(f"ids contain {len(dup_list)} duplicated values, e.g. {shown}")
    return out


def _prepare_exclude(exclude: Any, m: int) -> list[set[Any] | None]:
    if exclude is None:
        return [None] * m
    if isinstance(exclude, (str, bytes, set, frozenset)) or not hasattr(exclude, "__len__"):
        raise IndexInputError("exclude must be a sequence with one collection of ids per query")
    if len(exclude) != m:
        raise IndexInputError(f"exclude has {len(exclude)} entries but there are {m} queries")
    out: list[set[Any] | None] = []
    for entry in exclude:
        if entry is None:
            out.append(None)
        elif isinstance(entry, (set, frozenset)):
            out.append(set(entry) or None)
        elif isinstance(entry, np.ndarray):
            out.append(set(entry.ravel().tolist()) or None)
        elif isinstance(entry, (str, bytes)):
            raise IndexInputError("each exclude entry must be a collection of ids, not a string")
        else:
            out.append(set(entry) or None)
    return out


def _check_source(source: dict[str, Any] | None) -> dict[str, Any]:
    if source is None:
        return {}
    if not isinstance(source, dict):
        raise IndexInputError(f"source must be a dict, not {type(source).__name__}")
    try:
        json.dumps(source)
    except (TypeError, ValueError) as exc:
        raise IndexInputError(f"source metadata must be JSON-serialisable: {exc}") from exc
    return dict(source)


# --- helpers: files -------------------------------------------------------------------


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFileError(f"{path} is not a recbert index sidecar")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(
            f"{path} has format_version {meta.get('format_version')!r}; this recbert reads "
            f"version {FORMAT_VERSION}"
        )
    required = ("kind", "metric", "dim", "count", "id_dtype", "config", "files")
    missing = [key for key in required if key not in meta]
    missing += [f"files.{f}.sha256" for f in (INDEX_FILE, IDS_FILE)
                if "sha256" not in (meta.get("files") or {}).get(f, {})]
    if missing:
        raise IndexFileError(f"{path} lacks {', '.join(missing)}")
    if meta["metric"] not in METRICS:
        raise IndexFileError(f"{path} has unknown metric {meta['metric']!r}")
    return meta


def _read_ids(path: Path, meta: dict[str, Any]) -> np.ndarray:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise IndexFileError(f"cannot read {path}: {exc}") from exc
    if "id" not in table.column_names:
        raise IndexFileError(f"{path} has no 'id' column (columns: {table.column_names})")
    column = table.column("id")
    if meta["id_dtype"] == "string":
        ok = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    else:
        ok = pa.types.is_integer(column.type)
    if not ok or column.null_count:
        raise IndexFileError(
            f"{path} 'id' column is {column.type} with {column.null_count} nulls; "
            f"index.json says id_dtype={meta['id_dtype']!r}"
        )
    ids = column.to_numpy()
    return ids.astype(object) if meta["id_dtype"] == "string" else ids.astype(np.int64)


def read_embeddings_parquet(
    path: str | Path,
    id_column: str,
    vector_column: str = "embedding",
    *,
    batch_rows: int = 65_536,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | str | None]:
    """Read ``(ids, vectors [n, d] float32, recbert metadata)`` from an embeddings parquet.

    The vector column is a fixed-size list (or equal-length lists) of floats; it is read
    in record batches and flattened without Python loops. The metadata is the file's
    ``recbert`` schema metadata parsed as JSON (``None`` when absent).
    """
    path = Path(path)
    if not path.is_file():
        raise IndexFileMissingError(f"embeddings file {path} does not exist")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise IndexInputError(f"cannot read embeddings file {path}: {exc}") from exc
    schema = parquet.schema_arrow
    missing = [c for c in (id_column, vector_column) if c not in schema.names]
    if missing:
        raise IndexInputError(
            f"{path} has no column(s) {', '.join(map(repr, missing))} (columns: {schema.names})"
        )
    vtype = schema.field(vector_column).type
    if pa.types.is_fixed_size_list(vtype):
        dim: int | None = vtype.list_size
    elif pa.types.is_list(vtype) or pa.types.is_large_list(vtype):
        dim = None
    else:
        raise IndexInputError(f"{path}: column {vector_column!r} is {vtype}, not a list of floats")
    if not pa.types.is_floating(vtype.value_type):
        raise IndexInputError(
            f"{path}: column {vector_column!r} holds {vtype.value_type}, not floats"
        )
    metadata = _recbert_metadata(schema, path)
    n = parquet.metadata.num_rows
    if n == 0:
        raise IndexInputError(f"embeddings file {path} has no rows")

    vectors: np.ndarray | None = np.empty((n, dim), dtype=np.float32) if dim else None
    id_chunks: list[pa.Array] = []
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[id_column, vector_column]):
        col = batch.column(vector_column)
        if col.null_count:
            raise IndexInputError(f"{path}: column {vector_column!r} has {col.null_count} nulls")
        if dim is None or vectors is None:
            lengths = pc.min_max(pc.list_value_length(col))
            lo, hi = lengths["min"].as_py(), lengths["max"].as_py()
            if lo != hi or not lo:
                raise IndexInputError(
                    f"{path}: vectors in {vector_column!r} have lengths {lo}..{hi}; "
                    f"they must all have the same non-zero length"
                )
            dim = lo
            vectors = np.empty((n, dim), dtype=np.float32)
        elif not pa.types.is_fixed_size_list(col.type):
            lengths = pc.min_max(pc.list_value_length(col))
            if lengths["min"].as_py() != dim or lengths["max"].as_py() != dim:
                raise IndexInputError(f"{path}: vectors in {vector_column!r} change length")
        values = pc.list_flatten(col)
        if values.null_count:
            raise IndexInputError(
                f"{path}: column {vector_column!r} has {values.null_count} null elements"
            )
        flat = values.to_numpy(zero_copy_only=False)
        vectors[row : row + batch.num_rows] = flat.reshape(batch.num_rows, dim)
        ids = batch.column(id_column)
        if pa.types.is_dictionary(ids.type):
            ids = ids.dictionary_decode()
        id_chunks.append(ids)
        row += batch.num_rows
    assert vectors is not None and row == n
    all_ids = pa.chunked_array(id_chunks)
    if all_ids.null_count:
        raise IndexInputError(f"{path}: column {id_column!r} has {all_ids.null_count} nulls")
    return all_ids.to_numpy(), vectors, metadata


def embeddings_source(path: str | Path, id_column: str, vector_column: str,
                      metadata: dict[str, Any] | str | None) -> dict[str, Any]:
    """The sidecar ``source`` of an index built from an embeddings parquet: its path, columns
    and (when present) the file's ``recbert`` metadata."""
    source: dict[str, Any] = {"embeddings_path": str(path), "id_column": id_column,
                              "vector_column": vector_column}
    if metadata is not None:
        source["recbert"] = metadata
    return source


def _recbert_metadata(schema: pa.Schema, path: Path) -> dict[str, Any] | str | None:
    raw = (schema.metadata or {}).get(b"recbert")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        logger.warning("%s: 'recbert' schema metadata is not JSON; kept as text", path)
        return raw.decode("utf-8", errors="replace")


# --- evaluation -----------------------------------------------------------------------


def recall_at_k(approx_ids: Any, exact_ids: Any, k: int) -> float:
    """Mean fraction of each query's exact top-``k`` ids found in its approximate top-``k``.

    Padding (``None`` / ``-1``) in ``exact_ids`` is not counted; returns ``nan`` when there
    is nothing to find.
    """
    approx = np.asarray(approx_ids)
    exact = np.asarray(exact_ids)
    if approx.ndim != 2 or exact.ndim != 2 or approx.shape[0] != exact.shape[0]:
        raise IndexInputError(
            f"approx_ids {approx.shape} and exact_ids {exact.shape} must be [m, >=k] arrays "
            f"with the same number of rows"
        )
    if k < 1 or k > approx.shape[1] or k > exact.shape[1]:
        raise IndexInputError(
            f"k={k} must be between 1 and the number of result columns "
            f"({approx.shape[1]} approximate, {exact.shape[1]} exact)"
        )
    hits = total = 0
    for found, truth in zip(approx[:, :k].tolist(), exact[:, :k].tolist()):
        wanted = {t for t in truth if t is not None and t != PAD_ID}
        total += len(wanted)
        hits += len(wanted.intersection(found))
    return hits / total if total else math.nan
