"""Choose an index by measuring: ``recbert index build --kind auto --target-recall 0.95``.

:func:`build_auto` holds some queries out (given query vectors, e.g. exported users, or a
seeded sample of the vectors themselves, kept out of every index it measures), then

1. builds every candidate the registry lists (:attr:`IndexKindSpec.candidates`) on a
   seeded sample of at most ``sample`` vectors, sweeps each one's search parameter upward
   until recall@k against exact search on the held-out queries reaches the target, and
   times that setting (batch QPS, median of ``repeats``);
2. takes the ``finalists`` fastest that reached the target at ``min_speedup`` times exact
   search's speed on the sample (none: exact search is the right choice, and is built);
3. builds each finalist on all the vectors, sweeps its search parameter again from the
   sample's value, and keeps the fastest that reaches the target there at ``min_speedup``
   times exact search's QPS on all the vectors (none: exact search); then adds the
   held-out vectors. On all the vectors a finalist's speed-up is timed in ``repeats``
   rounds of exact and approximate search back to back (:func:`paired_rates`), so both
   sides of the ratio see the same machine.

The index carries the measurements (:attr:`VectorIndex.measured`, saved in the sidecar):
recall, QPS, exact QPS, the search value, every candidate's and finalist's figures and the
machine's load (:class:`recbert.evaluation.timing.IdleGuard`; figures taken beside another
busy process are flagged).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import faiss
import numpy as np

from recbert.evaluation.timing import IdleGuard, PairedRates, median_rate, paired_rates, tiled
from recbert.index.faiss_index import VectorIndex, _prepare_ids, _prepare_vectors, recall_at_k
from recbert.index.spec import (
    INDEX_KINDS,
    IndexConfig,
    IndexConfigError,
    IndexInputError,
    faiss_metric_name,
)

logger = logging.getLogger("recbert.index")

AUTO = "auto"  # the CLI's --kind value that selects by measurement
# the kind-specific options a candidate starts from, so that ``base`` contributes only what
# every kind shares (metric, device, seed, training sample)
PLAIN = {"rerank": 0, "ip_to_l2": False, "quantizer": "flat", "max_norm": None}
TIMING_BATCH = 4096  # queries per timed batch (held-out queries repeated up to it)


@dataclass(frozen=True)
class AutoSettings:
    """How :func:`build_auto` chooses.

    target_recall: recall@k against exact search the index must reach on held-out queries.
    k: the k of recall@k (the number of results served).
    sample: candidates are built on at most this many vectors (seeded sample).
    queries: held-out queries measured (sampled from the given queries, or from the vectors).
    repeats: each QPS figure is the median of this many timed batch searches.
    min_speedup: an approximate index is kept only if its batch QPS is at least this many
        times exact search's (else exact search is built: no recall loss for no speed).
    finalists: the fastest this many candidates on the sample are built on every vector and
        measured again there; the fastest reaching the target there wins.
    kinds: the kinds tried (default: every registry kind that lists candidates).
    seed: seed of the samples.
    """

    target_recall: float = 0.95
    k: int = 10
    sample: int = 200_000
    queries: int = 1_000
    repeats: int = 3
    min_speedup: float = 1.5
    finalists: int = 2
    kinds: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target_recall <= 1:
            raise IndexConfigError(f"target_recall={self.target_recall!r} must be in (0, 1]")
        for name in ("k", "sample", "queries", "repeats", "finalists"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise IndexConfigError(f"AutoSettings.{name}={value!r} must be a positive integer")
        if not self.min_speedup > 0:
            raise IndexConfigError(f"min_speedup={self.min_speedup!r} must be positive")
        if self.kinds is not None:
            unknown = sorted(set(self.kinds) - set(INDEX_KINDS))
            if unknown:
                raise IndexConfigError(f"unknown index kind(s) {unknown}; choose from {tuple(INDEX_KINDS)}")


@dataclass(frozen=True)
class Measurement:
    """One index measured on held-out queries."""

    kind: str
    params: str  # the kind's describe() of its build parameters
    changes: dict[str, Any]  # the candidate's IndexConfig changes
    search: str | None  # the search-time parameter's name
    value: int | None  # its value that reached the target (or the best tried)
    recall: float
    qps: float
    build_s: float
    n: int  # vectors indexed
    reached: bool  # recall >= the target
    note: str = ""
    # on all the vectors: the speed-up over exact search timed in paired rounds, and each
    # round's QPS of both (None / () on the sample, where candidates are only ranked)
    speedup: float | None = None
    rates: tuple[float, ...] = ()
    exact_rates: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists), as the sidecar stores and returns them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def exact_neighbours(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Positions of the exact top-``k`` of each query (brute force, no index copy of ``x``)."""
    faiss_metric = faiss.METRIC_L2 if faiss_metric_name(metric) == "l2" else faiss.METRIC_INNER_PRODUCT
    _, positions = faiss.knn(q, x, k, metric=faiss_metric)
    return positions


def build_auto(
    vectors: np.ndarray,
    ids: Any,
    base: IndexConfig | None = None,
    settings: AutoSettings | None = None,
    *,
    queries: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> VectorIndex:
    """The fastest index reaching ``settings.target_recall``, chosen by measurement (module
    docstring). ``base`` supplies the metric, device, seed and IVF training sample; its kind
    and kind parameters are what the candidates change."""
    base = base if base is not None else IndexConfig()
    settings = settings if settings is not None else AutoSettings()
    say = progress or (lambda line: logger.info("%s", line))
    x = _prepare_vectors(vectors, base.metric, what="vectors")
    n, d = x.shape
    id_array = _prepare_ids(ids, n)
    if settings.k > n:
        raise IndexInputError(f"k={settings.k} is larger than the number of vectors n={n}")
    rng = np.random.default_rng(settings.seed)

    # held-out queries, never inside a measured index
    if queries is not None:
        q_all = _prepare_vectors(queries, base.metric, what="queries")
        if q_all.shape[1] != d:
            raise IndexInputError(f"queries have dimension {q_all.shape[1]} but the vectors {d}")
        take = min(settings.queries, len(q_all))
        q = q_all[np.sort(rng.choice(len(q_all), size=take, replace=False))]
        inside = np.arange(n)
        held = np.empty(0, dtype=np.int64)
        queries_from = "given queries"
    else:
        take = min(settings.queries, n // 5)
        if take < 1 or n - take < settings.k:
            raise IndexInputError(f"{n} vectors are too few to hold {settings.queries} queries out; "
                                  f"pass queries or use kind='flat'")
        held = np.sort(rng.choice(n, size=take, replace=False))
        mask = np.ones(n, dtype=bool)
        mask[held] = False
        inside = np.flatnonzero(mask)
        q = x[held]
        queries_from = "held-out vectors"
    n_inside = len(inside)
    sampled = n_inside > settings.sample
    sample_rows = (np.sort(rng.choice(inside, size=settings.sample, replace=False))
                   if sampled else inside)
    xs = x[sample_rows]
    guard = IdleGuard(check_start=False)  # our own work so far is in the load average
    guard.start()
    started = time.perf_counter()
    say(f"auto: {len(q):,} {queries_from} as queries; candidates on "
        f"{len(xs):,} of {n_inside:,} vectors; target recall@{settings.k} >= {settings.target_recall}")

    truth, exact = _measure_exact(xs, q, settings, base.metric)
    results = [exact]
    say(f"auto: {_line(exact)}")
    kept: dict[int, VectorIndex] = {}
    for changes in _candidates(base, x, settings):
        if changes["kind"] == "flat":
            continue
        m, index = _measure(xs, id_array[sample_rows], q, truth, base.replace(**changes), changes, settings)
        results.append(m)
        say(f"auto: {_line(m)}")
        if index is not None and not sampled:
            kept[len(results) - 1] = index  # built on every vector already: reused below
        del index

    fast = sorted((i for i, m in enumerate(results)
                   if i > 0 and m.reached and m.qps >= settings.min_speedup * exact.qps),
                  key=lambda i: -results[i].qps)
    # the sample ranks candidates at its size; speed scales differently with n per kind
    # (HNSW ~log n, IVF ~sqrt n), so the best few are built and measured on everything
    finalists = fast[: settings.finalists if sampled else 1]
    say("auto: " + ("finalists: " + "; ".join(_line(results[i]).split(":")[0] for i in finalists)
                    if finalists else "exact search: no approximate index reached the target at "
                                      f">= {settings.min_speedup:g}x its speed on the sample"))

    exact_full = exact
    x_inside = x[inside] if finalists and sampled else xs  # every vector but the held-out ones
    if finalists and sampled:
        truth, exact_full = _measure_exact(x_inside, q, settings, base.metric)
        say(f"auto: exact on all {n_inside:,} vectors: {exact_full.qps:,.0f} QPS")
    chosen, full, index, note = 0, None, None, ""
    on_all: list[dict[str, Any]] = []
    for i in finalists:
        pick = results[i]
        t0 = time.perf_counter()
        if i in kept:
            candidate = kept.pop(i)
        else:
            candidate = VectorIndex.build(x_inside, id_array[inside], base.replace(**pick.changes), source=source)
        measured = _sweep(candidate, q, truth, settings, start=pick.value, changes=pick.changes,
                          build_s=pick.build_s if not sampled else time.perf_counter() - t0,
                          exact=lambda batch: exact_neighbours(x_inside, batch, settings.k, base.metric))
        say(f"auto: on all vectors: {_line(measured)} = {measured.speedup:.1f}x exact "
            f"({statistics.median(measured.exact_rates):,.0f} QPS; median of {settings.repeats} paired rounds)")
        on_all.append(measured.as_dict())
        good = measured.reached and measured.speedup >= settings.min_speedup
        if good and (full is None or measured.speedup > full.speedup):
            chosen, full, index = i, measured, candidate
        del candidate
    kept.clear()
    if finalists and not chosen:
        note = (f"no finalist reached recall {settings.target_recall} at >= {settings.min_speedup:g}x "
                f"exact search on all {n_inside:,} vectors; fell back to exact search")
        say(f"auto: {note}")
    if chosen:
        say(f"auto: chose {full.kind} ({full.params}, {full.search}={full.value})")
        index.set_search_default(full.value)
        if len(held):
            index.add(x[held], id_array[held])
    else:
        say("auto: chose flat (exact search)")
        index = VectorIndex.build(x, id_array, base.replace(kind="flat", **PLAIN), source=source)
    final = full if chosen else exact_full
    load = guard.stop()
    say(f"auto: {load.line()}")
    index.set_measured({
        "method": AUTO,
        "target_recall": settings.target_recall,
        "k": settings.k,
        "recall": final.recall,
        "qps": final.qps,
        "exact_qps": statistics.median(final.exact_rates) if chosen else exact_full.qps,
        "speedup": final.speedup if chosen else 1.0,
        "rates": list(final.rates),
        "exact_rates": list(final.exact_rates),
        "search": {final.search: final.value} if final.search else {},
        "measured_on": final.n,
        "queries": len(q),
        "queries_from": queries_from,
        "sample": len(xs),
        "repeats": settings.repeats,
        "min_speedup": settings.min_speedup,
        "chosen": index.kind,
        "note": note,
        "candidates": [m.as_dict() for m in results],
        "finalists": on_all,
        "load": load.as_dict(),
        "seconds": time.perf_counter() - started,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return index


# --- helpers --------------------------------------------------------------------------


def _candidates(base: IndexConfig, x: np.ndarray, settings: AutoSettings) -> list[dict[str, Any]]:
    """Every registry candidate's full IndexConfig changes (from :data:`PLAIN`). MIPS-to-NN
    candidates are bounded by the largest norm of *all* the vectors, so that the held-out
    ones can be added afterwards."""
    n, d = x.shape
    kinds = settings.kinds if settings.kinds is not None else tuple(INDEX_KINDS)
    max_norm = None
    out = []
    for kind in kinds:
        for changes in INDEX_KINDS[kind].candidates(base.replace(kind=kind, **PLAIN), n, d):
            full = {"kind": kind, **PLAIN, **changes}
            if full["ip_to_l2"]:
                if max_norm is None:
                    max_norm = float(np.sqrt(np.einsum("ij,ij->i", x, x).max()))
                full["max_norm"] = max_norm
            out.append(full)
    return out


def batch_qps(index: VectorIndex, q: np.ndarray, k: int, repeats: int, **override) -> float:
    """Batch QPS of ``index.search`` (with ``override``, e.g. ``nprobe=64``): the median of
    ``repeats`` timed searches of ``q`` repeated to at least :data:`TIMING_BATCH` queries
    (faiss' exact search was ~5x slower per query on batches of 1,000-1,999 than of 2,000+
    under its default BLAS threshold, recbert.index.blas;
    every index is timed the same way), after a warm-up."""
    batch = tiled(q, TIMING_BATCH)
    index.search(q[: min(len(q), 64)], k, **override)
    qps, _, _ = median_rate(lambda: index.search(batch, k, **override), len(batch), repeats)
    return qps


def paired_qps(exact: Callable[[np.ndarray], Any], index: VectorIndex, q: np.ndarray, k: int,
               rounds: int, **override) -> PairedRates:
    """``index.search`` (with ``override``) against ``exact(batch)`` in ``rounds`` paired
    rounds (:func:`recbert.evaluation.timing.paired_rates`) on the same batch as
    :func:`batch_qps`, after a warm-up of both: ``.ratio`` is the speed-up over exact."""
    batch = tiled(q, TIMING_BATCH)
    exact(q[: min(len(q), 64)])
    index.search(q[: min(len(q), 64)], k, **override)
    return paired_rates(lambda: exact(batch), lambda: index.search(batch, k, **override), len(batch), rounds)


def _measure_exact(x: np.ndarray, q: np.ndarray, settings: AutoSettings,
                   metric: str) -> tuple[np.ndarray, Measurement]:
    """The exact top-k positions and exact search's QPS (brute force over ``x`` as faiss'
    flat index runs it, without recbert's result handling: if anything, it favours exact)."""
    truth = exact_neighbours(x, q, settings.k, metric)
    batch = tiled(q, TIMING_BATCH)
    qps, _, _ = median_rate(lambda: exact_neighbours(x, batch, settings.k, metric), len(batch), settings.repeats)
    return truth, Measurement(
        kind="flat", params="exact", changes={"kind": "flat", **PLAIN},
        search=None, value=None, recall=1.0, qps=qps, build_s=0.0, n=len(x), reached=True,
    )


def _measure(xs: np.ndarray, ids: np.ndarray, q: np.ndarray, truth: np.ndarray, cfg: IndexConfig,
             changes: dict[str, Any], settings: AutoSettings) -> tuple[Measurement, VectorIndex | None]:
    t0 = time.perf_counter()
    try:
        index = VectorIndex.build(xs, ids, cfg)
    except IndexConfigError as exc:
        return Measurement(kind=cfg.kind, params=str(changes), changes=changes, search=None, value=None,
                           recall=float("nan"), qps=0.0, build_s=0.0, n=len(xs), reached=False,
                           note=f"not built: {exc}"), None
    return _sweep(index, q, truth, settings, start=None, changes=changes,
                  build_s=time.perf_counter() - t0), index


def _sweep(index: VectorIndex, q: np.ndarray, truth: np.ndarray, settings: AutoSettings, *,
           start: int | None, changes: dict[str, Any], build_s: float,
           exact: Callable[[np.ndarray], Any] | None = None) -> Measurement:
    """The smallest search value (from ``start`` on) reaching the target, and its median QPS:
    alone, or, given ``exact`` (exact search of a batch), timed in paired rounds against it
    (:func:`paired_qps`; the speed-up and each round's figures are recorded too).
    ``truth`` holds exact top-k *positions* in the order the index's vectors were added."""
    k = settings.k
    cfg = index.config
    param = INDEX_KINDS[cfg.kind].search
    truth_ids = index.ids[truth]
    values = [v for v in param.sweep if param.effective(cfg, v) == v and (start is None or v >= start)]
    if not values:
        values = [param.effective(cfg, param.sweep[-1])]
    best: tuple[int, float] | None = None
    chosen: tuple[int, float] | None = None
    for value in values:
        _, found = index.search(q, k, **{param.name: value})
        recall = recall_at_k(found, truth_ids, k)
        if best is None or recall > best[1]:
            best = (value, recall)
        if recall >= settings.target_recall:
            chosen = (value, recall)
            break
    value, recall = chosen or best
    timing: dict[str, Any] = {}
    if exact is None:
        qps = batch_qps(index, q, k, settings.repeats, **{param.name: value})
    else:
        paired = paired_qps(exact, index, q, k, settings.repeats, **{param.name: value})
        qps = paired.other
        timing = {"speedup": paired.ratio, "rates": paired.other_rates, "exact_rates": paired.base_rates}
    return Measurement(kind=cfg.kind, params=INDEX_KINDS[cfg.kind].describe(cfg), changes=changes,
                       search=param.name, value=int(value), recall=float(recall), qps=float(qps),
                       build_s=build_s, n=index.count, reached=chosen is not None,
                       note="" if chosen else f"best recall of the sweep up to {param.name}={values[-1]}",
                       **timing)


def _line(m: Measurement) -> str:
    search = f", {m.search}={m.value}" if m.search and m.value is not None else ""
    status = "reaches the target" if m.reached else (m.note or "misses the target")
    return (f"{m.kind:<9} {m.params}{search}: recall {m.recall:.4f}, {m.qps:,.0f} QPS, "
            f"build {m.build_s:.1f}s on {m.n:,} ({status})")
