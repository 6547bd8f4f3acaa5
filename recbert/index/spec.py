"""Index configuration, the registry of index kinds, and the errors raised by :mod:`recbert.index`.

Every error raised here is both a project error (:class:`recbert.errors.RecbertError`,
which the CLI prints as one line) and the matching builtin (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so plain ``except ValueError`` works too.

:data:`INDEX_KINDS` is the only list of index kinds. Each name maps to an
:class:`IndexKindSpec` holding everything that differs between kinds: how to create the
empty faiss index, whether it is IVF-based, its search-time parameter, whether it can live
on a GPU, and which kind-specific :class:`IndexConfig` options it accepts. ``IndexConfig``
validation, :class:`recbert.index.VectorIndex`, the CLI's choices and
``benchmarks/faiss_index.py`` all read it: adding a kind means adding its functions and
one entry here. This module does not need faiss; the functions that use it import it.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from recbert.errors import CheckpointError, ConfigError, DataError, RecbertError

logger = logging.getLogger("recbert.index")

Metric = Literal["ip", "cosine", "l2"]
Device = Literal["auto", "cpu", "gpu"]

METRICS: tuple[str, ...] = ("ip", "cosine", "l2")
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")


class IndexConfigError(ConfigError, ValueError):
    """An index configuration value that is invalid, alone or for the data it is built on."""


class IndexInputError(DataError, ValueError):
    """Vectors, ids, queries or search arguments that cannot be used."""


class IndexFileError(CheckpointError, ValueError):
    """A saved index directory that is corrupt or does not match its sidecar / the model."""


class IndexFileMissingError(CheckpointError, FileNotFoundError):
    """A saved index directory, or one of its files, does not exist."""


class IndexDeviceError(RecbertError, RuntimeError):
    """A GPU was requested explicitly but faiss cannot use one."""


# --- index kinds ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SearchParam:
    """An index kind's search-time parameter: an :class:`IndexConfig` field of that name,
    which is also the :meth:`VectorIndex.search` keyword that overrides it for one call.

    name: the field / keyword, e.g. ``ef_search``.
    faiss_name: the faiss parameter it sets, e.g. ``efSearch``: on the index as its default
        (through ``faiss.ParameterSpace``) and, for one call, as a keyword of ``faiss_params``.
    faiss_params: the faiss ``SearchParameters`` class for one call, by name so that this
        module needs no faiss, e.g. ``SearchParametersHNSW``.
    limit: ``(resolved config) -> int``, the largest value the index can use (IVF: its
        ``nlist``; larger values are clipped), or ``None`` when there is no such bound.
    sweep: ascending values worth trying; ``benchmarks/faiss_index.py`` sweeps them.
    """

    name: str
    faiss_name: str
    faiss_params: str
    limit: Callable[[IndexConfig], int] | None
    sweep: tuple[int, ...]

    def effective(self, cfg: IndexConfig, value: int) -> int:
        """The value faiss uses when ``value`` is asked for: clipped to :attr:`limit`."""
        return int(value if self.limit is None else min(value, self.limit(cfg)))


@dataclass(frozen=True, kw_only=True)
class IndexKindSpec:
    """What one index kind is and how to make it.

    build: ``(config, n, d, faiss metric) -> (index, config)``: the empty CPU faiss index
        (untrained when ``ivf``) for ``n`` vectors of dimension ``d``, and the config with
        the kind's automatic values resolved. The search default is stored afterwards.
    describe: ``(resolved config) -> str``, the kind's build parameters in a few words.
    gpu: faiss can move the index to a GPU.
    ivf: IVF-based: uses ``nlist`` / ``nprobe`` and is trained on a sample before adding.
    search: the search-time parameter, or ``None`` when the kind has none (exact search).
    rerank: the index stores compressed codes, so ``IndexConfig.rerank`` may re-rank its
        candidates with exact distances (other kinds already rank by exact distances).
    ip_to_l2: the index is built for a metric, so ``IndexConfig.ip_to_l2`` may apply the
        MIPS-to-NN reduction to ``metric='ip'``.
    pq_bits: the PQ code width the kind uses when ``IndexConfig.pq_bits`` is ``None``, and
        the only one it accepts when ``pq_bits_fixed``; ``None`` for kinds without PQ.
    pq_bits_fixed: the kind's kernels exist for :attr:`pq_bits` only (fast-scan: 4 bits).
    candidates: ``(config, n, dim) -> config changes`` that ``recbert index build --kind
        auto`` tries for this kind (:mod:`recbert.index.auto`); empty: never tried.
    """

    build: Callable[[IndexConfig, int, int, int], tuple[Any, IndexConfig]]
    describe: Callable[[IndexConfig], str]
    gpu: bool
    ivf: bool = False
    search: SearchParam | None = None
    rerank: bool = False
    ip_to_l2: bool = False
    pq_bits: int | None = None
    pq_bits_fixed: bool = False
    candidates: Callable[[IndexConfig, int, int], tuple[dict[str, Any], ...]] = lambda cfg, n, d: ()


# --- flat -----------------------------------------------------------------------------


def _build_flat(cfg: IndexConfig, n: int, d: int, metric: int) -> tuple[Any, IndexConfig]:
    import faiss

    return faiss.IndexFlat(d, metric), cfg


def _describe_flat(cfg: IndexConfig) -> str:
    return "exact"


# --- IVF ------------------------------------------------------------------------------


def _ivf_config(cfg: IndexConfig, n: int) -> IndexConfig:
    """``cfg`` with ``nlist`` resolved for ``n`` vectors and ``nprobe`` clipped to it."""
    nlist = cfg.resolved_nlist(n)
    return cfg.replace(nlist=nlist, nprobe=min(cfg.nprobe, nlist))


def _ivf_ready(index: Any, cfg: IndexConfig, n: int) -> Any:
    """``index`` with what every IVF kind shares: seeded k-means, spherical for cosine; warns
    when the cells get fewer than 39 training vectors each."""
    index.cp.seed = cfg.seed
    if cfg.metric == "cosine":
        index.cp.spherical = True
    n_train = min(n, cfg.train_sample)
    if n_train < 39 * cfg.nlist:
        logger.warning(
            "training %d IVF cells on %d vectors (< 39 per cell): cells will be poor; "
            "raise train_sample or lower nlist", cfg.nlist, n_train,
        )
    return index


def _flat_quantizer(d: int, metric: int) -> Any:
    import faiss

    return faiss.IndexFlat(d, metric)


def _hnsw_quantizer(d: int, metric: int) -> Any:
    import faiss

    return faiss.IndexHNSWFlat(d, 32, metric)


# IVF coarse quantizers: the index that assigns a vector / query to its nearest cells.
# ``flat`` compares with every centroid (exact; for a batch of queries one matrix product,
# cost ~nlist per query); ``hnsw`` searches the centroids through an HNSW32 graph (faiss
# ``IVFx_HNSW32``): cost ~log nlist per query, but graph walks are slow per distance and
# need a beam of 2 * nprobe (:func:`quantizer_ef_search`), at a small recall cost.
COARSE_QUANTIZERS: dict[str, Callable[[int, int], Any]] = {
    "flat": _flat_quantizer,
    "hnsw": _hnsw_quantizer,
}
QUANTIZERS: tuple[str, ...] = tuple(COARSE_QUANTIZERS)

# Up to this many cells the exact quantizer is the faster one. Measured at 1M x 64, 4,000
# cells, nprobe 112, batches of 10,000 queries: assigning queries through the HNSW graph ran
# at ~7,400 QPS, the exact quantizer's matrix product at ~35,000-40,000 QPS with higher
# recall (exact cells); IVF-Flat with the HNSW quantizer was the slower index (BENCHMARKS.md,
# issue #11). The product grows ~nlist, the graph ~log nlist: the graph pays only for far
# more cells than ``4 * sqrt(n)`` gives below ~60M vectors.
FLAT_QUANTIZER_MAX_CELLS = 32_768

# The cells-per-sqrt(n) factors (``IndexConfig.nlist_factor``) ``--kind auto`` tries for each
# IVF candidate. More cells make each probe cheaper and assignment dearer; with the exact
# quantizer, 8 * sqrt(n) cells beat 4 * sqrt(n) at 1M x 64 (IVF-Flat on the MIPS reduction:
# recall@10 0.956 at 9.7x exact vs 7.5x; BENCHMARKS.md, issue #11), so both are measured.
AUTO_NLIST_FACTORS: tuple[int, ...] = (4, 8)


def coarse_quantizer_for(nlist: int) -> str:
    """The coarse quantizer ``--kind auto`` gives ``nlist`` cells: exact up to
    :data:`FLAT_QUANTIZER_MAX_CELLS`, the HNSW graph beyond."""
    return "flat" if nlist <= FLAT_QUANTIZER_MAX_CELLS else "hnsw"


def quantizer_ef_search(nprobe: int) -> int:
    """The HNSW coarse quantizer's beam width for ``nprobe`` cells: the graph must return
    ``nprobe`` good centroids. With faiss' default (16, so a beam of just ``nprobe``), IVF-Flat
    over 4,000 cells of 1M x 64 vectors plateaued at recall@10 0.78 (MIPS reduction) for
    nprobe 64-128; with this beam it reached 0.91 / 0.97."""
    return max(64, 2 * int(nprobe))


def _quantizer(cfg: IndexConfig, d: int, metric: int) -> Any:
    return COARSE_QUANTIZERS[cfg.quantizer](d, metric)


def _ivf_train_on_flat(index: Any, cfg: IndexConfig, d: int, metric: int) -> Any:
    """k-means assigns training vectors with an exact index whatever the quantizer: a graph
    quantizer would be rebuilt every k-means iteration; its centroids are added to it after."""
    if cfg.quantizer != "flat":
        index.clustering_index = _flat_quantizer(d, metric)
    return index


def _build_ivf_flat(cfg: IndexConfig, n: int, d: int, metric: int) -> tuple[Any, IndexConfig]:
    import faiss

    resolved = _ivf_config(cfg, n)
    index = faiss.IndexIVFFlat(_quantizer(cfg, d, metric), d, resolved.nlist, metric)
    _ivf_train_on_flat(index, cfg, d, metric)
    return _ivf_ready(index, resolved, n), resolved


def _pq_shape(kind: str, cfg: IndexConfig, n: int, d: int) -> tuple[int, int]:
    """``(pq_m, pq_bits)`` for a PQ kind, checked against the training sample."""
    pq_m = cfg.resolved_pq_m(d)
    bits = cfg.resolved_pq_bits()
    n_train = min(n, cfg.train_sample)
    if n_train < 2**bits:
        raise IndexConfigError(
            f"{kind} with pq_bits={bits} needs at least {2**bits} training "
            f"vectors, got {n_train} (n={n}, train_sample={cfg.train_sample}); lower "
            f"pq_bits or use kind='flat'/'ivf_flat'"
        )
    return pq_m, bits


def _pq_builder(kind: str, faiss_class: str) -> Callable[[IndexConfig, int, int, int], tuple[Any, IndexConfig]]:
    """The build function of an IVF-PQ kind whose faiss index class is ``faiss_class``."""

    def build(cfg: IndexConfig, n: int, d: int, metric: int) -> tuple[Any, IndexConfig]:
        import faiss

        resolved = _ivf_config(cfg, n)
        pq_m, bits = _pq_shape(kind, cfg, n, d)
        index = getattr(faiss, faiss_class)(_quantizer(cfg, d, metric), d, resolved.nlist, pq_m, bits, metric)
        _ivf_train_on_flat(index, cfg, d, metric)
        index.pq.cp.seed = cfg.seed
        return _ivf_ready(index, resolved, n), resolved.replace(pq_m=pq_m, pq_bits=bits)

    return build


_build_ivf_pq = _pq_builder("ivf_pq", "IndexIVFPQ")
_build_ivf_pq_fs = _pq_builder("ivf_pq_fs", "IndexIVFPQFastScan")


def _describe_quantizer(cfg: IndexConfig) -> str:
    quantizer = "" if cfg.quantizer == "flat" else f", {cfg.quantizer.upper()} quantizer"
    return quantizer + (", ip->l2" if cfg.ip_to_l2 else "")


def _describe_ivf_flat(cfg: IndexConfig) -> str:
    return f"nlist={cfg.nlist}{_describe_quantizer(cfg)}"


def _describe_ivf_pq(cfg: IndexConfig) -> str:
    rerank = f", re-rank {cfg.rerank}k" if cfg.rerank else ""
    return f"nlist={cfg.nlist}{_describe_quantizer(cfg)}, PQ{cfg.pq_m}x{cfg.pq_bits}{rerank}"


def _describe_ivf_pq_fs(cfg: IndexConfig) -> str:
    return _describe_ivf_pq(cfg).replace(f"PQ{cfg.pq_m}x{cfg.pq_bits}", f"PQ{cfg.pq_m}x{cfg.pq_bits}fs")


def _ivf_candidates(cfg: IndexConfig, n: int, d: int) -> tuple[dict[str, Any], ...]:
    """IVF-Flat for auto, at each cell count of :data:`AUTO_NLIST_FACTORS` (distinct ones
    only): the exact coarse quantizer unless there are enough cells for the HNSW one to pay
    (:func:`coarse_quantizer_for`); for inner product also on the MIPS-to-NN reduction, whose
    L2 cells suit it better (at 1M x 64: recall@10 0.969 at nprobe 128 of 4,000 cells, vs
    0.88 for inner-product cells)."""
    out, seen = [], set()
    for factor in AUTO_NLIST_FACTORS:
        # enough training vectors for the automatic factor * sqrt(n) cells (50 each): the
        # default sample would cap nlist at train_sample / 39 (2,564 at 1M, where 4,000 cells
        # measured 8.9x exact against 5.4x)
        cells = {"nlist_factor": factor,
                 "train_sample": min(n, max(cfg.train_sample, 50 * round(factor * math.sqrt(n))))}
        nlist = cfg.replace(**cells).resolved_nlist(n)
        if nlist in seen:  # few vectors: both factors clip to the same cells
            continue
        seen.add(nlist)
        quantizer = coarse_quantizer_for(nlist)
        out.append({"quantizer": quantizer, **cells})
        if cfg.metric == "ip":
            out.append({"quantizer": quantizer, "ip_to_l2": True, **cells})
    return tuple(out)


def _ivf_pq_fs_candidates(cfg: IndexConfig, n: int, d: int) -> tuple[dict[str, Any], ...]:
    """Fast-scan PQ is a candidate generator: its best 10k are always re-ranked exactly. Not
    tried for raw inner product: with norms that vary, its codes reached recall@10 0.63 at
    1M x 64 whatever nprobe (BENCHMARKS.md)."""
    if cfg.metric == "ip":
        return ()
    return ({"quantizer": coarse_quantizer_for(cfg.resolved_nlist(n)), "rerank": 10},)


def _nlist(cfg: IndexConfig) -> int:
    """The IVF cells of a built index: the most ``nprobe`` can visit."""
    return int(cfg.nlist or 1)


NPROBE = SearchParam(
    name="nprobe", faiss_name="nprobe", faiss_params="SearchParametersIVF", limit=_nlist,
    sweep=(1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 192, 256),
)


# --- HNSW -----------------------------------------------------------------------------


def _build_hnsw(cfg: IndexConfig, n: int, d: int, metric: int) -> tuple[Any, IndexConfig]:
    import faiss

    index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, metric)
    index.hnsw.efConstruction = cfg.ef_construction
    return index, cfg


def _describe_hnsw(cfg: IndexConfig) -> str:
    return f"M={cfg.hnsw_m}, efC={cfg.ef_construction}{', ip->l2' if cfg.ip_to_l2 else ''}"


def _hnsw_candidates(cfg: IndexConfig, n: int, d: int) -> tuple[dict[str, Any], ...]:
    """HNSW for auto: degree 32 built with efConstruction 40 and 200 (under raw inner product
    the larger one was *worse* at 1M x 64, 0.945 vs 0.958 at ef_search 256), and for inner
    product the graph on the MIPS-to-NN reduction (on real model vectors the best HNSW, on
    the synthetic mixture the worst: which wins depends on the vectors)."""
    graphs = [{"hnsw_m": 32, "ef_construction": 40}, {"hnsw_m": 32, "ef_construction": 200}]
    if cfg.metric == "ip":
        graphs.append({"hnsw_m": 32, "ef_construction": 200, "ip_to_l2": True})
    return tuple(graphs)


EF_SEARCH = SearchParam(
    name="ef_search", faiss_name="efSearch", faiss_params="SearchParametersHNSW", limit=None,
    sweep=(16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512),
)


# --- the registry ---------------------------------------------------------------------

INDEX_KINDS: dict[str, IndexKindSpec] = {
    "flat": IndexKindSpec(
        build=_build_flat, describe=_describe_flat, gpu=True, candidates=lambda cfg, n, d: ({},),
    ),
    "ivf_flat": IndexKindSpec(
        build=_build_ivf_flat, describe=_describe_ivf_flat, gpu=True, ivf=True, search=NPROBE, ip_to_l2=True,
        candidates=_ivf_candidates,
    ),
    "ivf_pq": IndexKindSpec(  # 8-bit PQ: compact; the fast-scan kind below is faster
        build=_build_ivf_pq, describe=_describe_ivf_pq, gpu=True, ivf=True, search=NPROBE, ip_to_l2=True,
        rerank=True, pq_bits=8,
    ),
    "ivf_pq_fs": IndexKindSpec(  # 4-bit PQ scanned with SIMD lookup tables; no GPU version
        build=_build_ivf_pq_fs, describe=_describe_ivf_pq_fs, gpu=False, ivf=True, search=NPROBE, ip_to_l2=True,
        rerank=True, pq_bits=4, pq_bits_fixed=True, candidates=_ivf_pq_fs_candidates,
    ),
    "hnsw": IndexKindSpec(  # faiss has no GPU HNSW
        build=_build_hnsw, describe=_describe_hnsw, gpu=False, search=EF_SEARCH, ip_to_l2=True,
        candidates=_hnsw_candidates,
    ),
}
KINDS: tuple[str, ...] = tuple(INDEX_KINDS)
IndexKind = Literal[KINDS]  # the registry's names


def kinds_where(predicate: Callable[[IndexKindSpec], bool]) -> tuple[str, ...]:
    """The names of the registered kinds whose spec satisfies ``predicate``, in registry order."""
    return tuple(name for name, spec in INDEX_KINDS.items() if predicate(spec))


# --- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class IndexConfig:
    """How to build and search a :class:`recbert.index.VectorIndex`.

    kind: a name in :data:`INDEX_KINDS`: ``flat`` (exact), ``ivf_flat``, ``ivf_pq``,
        ``ivf_pq_fs`` (4-bit fast-scan PQ) or ``hnsw``.
    metric: ``ip`` (inner product), ``cosine`` (vectors and queries are L2-normalised, then
        inner product) or ``l2`` (squared Euclidean; scores are returned negated so that
        higher is always better).
    nlist: IVF cells; ``None`` picks ``nlist_factor * sqrt(n)`` clipped so that every cell gets
        at least 39 training vectors (faiss' own lower bound) and at most ``n``.
    nlist_factor: cells per ``sqrt(n)`` when ``nlist`` is ``None`` (4: faiss' usual advice;
        ``--kind auto`` also measures 8, :data:`AUTO_NLIST_FACTORS`).
    nprobe: IVF cells visited per query (clipped to ``nlist``).
    quantizer: IVF kinds' coarse quantizer, a name in :data:`COARSE_QUANTIZERS`: ``flat``
        (exact assignment) or ``hnsw`` (an HNSW32 graph over the centroids; faster only
        for many more cells than :data:`FLAT_QUANTIZER_MAX_CELLS`).
    pq_m: PQ sub-quantizers (bytes per vector at 8 bits); must divide the dimension.
        ``None`` picks the largest divisor of the dimension that is at most ``dim / 2``.
    pq_bits: bits per PQ sub-quantizer code; ``None``: the kind's own (8 for ``ivf_pq``, 4
        for ``ivf_pq_fs``, whose fast-scan kernels exist for 4 bits only).
    hnsw_m: HNSW graph degree.
    ef_construction / ef_search: HNSW beam widths at build / search time.
    ip_to_l2: ``hnsw`` with ``metric='ip'`` only: build the graph on items augmented with
        ``sqrt(M^2 - |x|^2)`` (``M`` = the largest item norm, stored as ``max_norm``) and search
        with queries augmented with 0, so nearest neighbours in L2 are exactly the largest
        inner products (the MIPS-to-NN reduction); scores are still inner products. HNSW
        graphs are built for a metric, and raw inner product is not one.
    rerank: ``ivf_pq`` only: re-rank the best ``rerank * k`` PQ candidates with exact
        distances on the full vectors (faiss ``IndexRefineFlat``; costs ``n * dim * 4`` bytes
        more memory, keeps PQ's fast scan). ``0`` = off.
    train_sample: at most this many vectors (seeded sample) train IVF / PQ.
    seed: seed for the training sample and faiss k-means.
    device: ``auto`` uses a GPU when faiss has one, ``gpu`` requires it, ``cpu`` never uses it.

    Defaults follow ``benchmarks/faiss_index.py`` at 1M x 64 inner-product vectors: there
    ``nprobe=128`` (of ~2,560 cells) and ``ef_search=256`` with ``hnsw_m=32`` /
    ``ef_construction=40`` give recall@10 of about 0.95; a larger ``ef_construction`` did
    *not* help HNSW under inner product. Lower them for speed once measured on real data.
    """

    kind: IndexKind = "flat"
    metric: Metric = "ip"
    nlist: int | None = None
    nlist_factor: int = 4
    nprobe: int = 128
    quantizer: str = "flat"
    pq_m: int | None = None
    pq_bits: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 256
    rerank: int = 0
    ip_to_l2: bool = False
    max_norm: float | None = None  # resolved when an ip_to_l2 index is built
    train_sample: int = 100_000
    seed: int = 0
    device: Device = "auto"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # numpy integers (e.g. from a sweep) are accepted and stored as plain ints
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
                object.__setattr__(self, f.name, int(value))
        _check_choice("kind", self.kind, tuple(INDEX_KINDS))
        _check_choice("metric", self.metric, METRICS)
        _check_choice("device", self.device, DEVICES)
        if self.nlist is not None:
            _check_int("nlist", self.nlist, minimum=1)
        _check_int("nlist_factor", self.nlist_factor, minimum=1)
        _check_int("nprobe", self.nprobe, minimum=1)
        if self.pq_m is not None:
            _check_int("pq_m", self.pq_m, minimum=1)
        _check_choice("quantizer", self.quantizer, tuple(COARSE_QUANTIZERS))
        if self.pq_bits is not None:
            _check_int("pq_bits", self.pq_bits, minimum=1, maximum=16)
        _check_int("hnsw_m", self.hnsw_m, minimum=2, maximum=512)
        _check_int("ef_construction", self.ef_construction, minimum=1)
        _check_int("ef_search", self.ef_search, minimum=1)
        _check_int("rerank", self.rerank, minimum=0)
        spec = INDEX_KINDS[self.kind]
        if self.quantizer != "flat" and not spec.ivf:
            raise IndexConfigError(
                f"IndexConfig.quantizer={self.quantizer!r} applies to IVF kinds "
                f"({_either(lambda s: s.ivf)}) only, got kind={self.kind!r}"
            )
        if spec.pq_bits_fixed and self.pq_bits not in (None, spec.pq_bits):
            raise IndexConfigError(
                f"IndexConfig.pq_bits={self.pq_bits} cannot be used with kind={self.kind!r}: "
                f"its kernels exist for pq_bits={spec.pq_bits} only (use kind='ivf_pq' for others)"
            )
        if self.rerank and not spec.rerank:
            raise IndexConfigError(
                f"IndexConfig.rerank={self.rerank} applies to kind={_either(lambda s: s.rerank)} "
                f"only ({self.kind!r} already ranks by exact distances)"
            )
        if self.ip_to_l2 and (not spec.ip_to_l2 or self.metric != "ip"):
            raise IndexConfigError(
                f"IndexConfig.ip_to_l2 applies to kind={_either(lambda s: s.ip_to_l2)} with "
                f"metric='ip' only, got kind={self.kind!r}, metric={self.metric!r}"
            )
        if self.max_norm is not None and not (isinstance(self.max_norm, (int, float))
                                              and math.isfinite(self.max_norm) and self.max_norm > 0):
            raise IndexConfigError(f"IndexConfig.max_norm={self.max_norm!r} must be a positive number")
        _check_int("train_sample", self.train_sample, minimum=1)
        _check_int("seed", self.seed, minimum=0)

    # --- derived values -------------------------------------------------------------

    def resolved_nlist(self, n: int, n_train: int | None = None) -> int:
        """The number of IVF cells for ``n`` vectors (``n_train`` of them used for training)."""
        n_train = min(n, self.train_sample) if n_train is None else n_train
        if self.nlist is not None:
            if self.nlist > n:
                raise IndexConfigError(
                    f"nlist={self.nlist} is larger than the number of vectors n={n}; "
                    f"use nlist <= n (or nlist=None for automatic)"
                )
            if self.nlist > n_train:
                raise IndexConfigError(
                    f"nlist={self.nlist} is larger than the training sample ({n_train} vectors, "
                    f"train_sample={self.train_sample}); raise train_sample or lower nlist"
                )
            return self.nlist
        auto = int(round(self.nlist_factor * math.sqrt(n)))
        return max(1, min(auto, n_train // 39 if n_train >= 39 else 1, n))

    def resolved_pq_m(self, dim: int) -> int:
        """The number of PQ sub-quantizers for vectors of dimension ``dim``."""
        if self.pq_m is not None:
            if dim % self.pq_m != 0:
                raise IndexConfigError(
                    f"pq_m={self.pq_m} must divide the vector dimension dim={dim}; "
                    f"divisors of {dim}: {_divisors(dim)}"
                )
            return self.pq_m
        candidates = [m for m in _divisors(dim) if m <= max(1, dim // 2)]
        return max(candidates)

    def resolved_pq_bits(self) -> int:
        """The PQ code width: ``pq_bits``, or the kind's own when it is ``None``."""
        own = INDEX_KINDS[self.kind].pq_bits
        if self.pq_bits is not None:
            return self.pq_bits
        if own is None:
            raise IndexConfigError(f"kind={self.kind!r} has no product quantizer")
        return own

    def replace(self, **changes: Any) -> IndexConfig:
        """A copy with ``changes`` applied (and validated)."""
        values = asdict(self)
        unknown = sorted(set(changes) - set(values))
        if unknown:
            raise IndexConfigError(f"unknown IndexConfig field(s): {', '.join(unknown)}")
        values.update(changes)
        return IndexConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise IndexConfigError(f"unknown IndexConfig field(s): {', '.join(unknown)}")
        return cls(**values)


def faiss_metric_name(metric: str) -> str:
    """The faiss metric a recbert metric is searched with: ``ip`` or ``l2``."""
    return "l2" if metric == "l2" else "ip"


def _either(predicate: Callable[[IndexKindSpec], bool]) -> str:
    """The registered kinds satisfying ``predicate``, quoted, for an error message."""
    return " or ".join(repr(name) for name in kinds_where(predicate))


def _divisors(n: int) -> list[int]:
    return [m for m in range(1, n + 1) if n % m == 0]


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise IndexConfigError(
            f"IndexConfig.{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}"
        )


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise IndexConfigError(
            f"IndexConfig.{name}={value!r} must be an integer, not {type(value).__name__}"
        )
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise IndexConfigError(f"IndexConfig.{name}={value!r} must be {bound}")
