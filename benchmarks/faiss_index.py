"""Benchmark recbert.index kinds: build time, size, QPS and recall@k against the exact index.

Synthetic items come from a seeded Gaussian mixture shaped like trained embeddings
(anisotropic centres, Zipf-sized clusters, log-normal norms, so popular directions get larger
inner products); queries are further draws from the same mixture, not copies of items.
With ``--embeddings`` a real exported item-embedding parquet is used instead, and
``--queries`` of its rows (random, seeded) are held out of the index as queries; with
``--query-embeddings`` (an exported user parquet) every item is indexed and ``--queries``
sampled user vectors are the queries, as in serving.

Each ``--index KIND[:key=value,...]`` is one index to build (IndexConfig fields; the
default list is the 1M grid below). For each, nprobe / efSearch are swept on the first
``--sweep-queries`` queries; the smallest value reaching ``--target-recall`` there is then
measured on the full ``--queries`` batch for the summary table. Every QPS figure is the
median of ``--repeats`` timed runs, exact and approximate indexes in the same process. The
summary table's speed-up is timed in ``--rounds`` rounds of exact and approximate search
back to back (alternating which goes first), and is the median of the per-round ratios:
QPS drifts by 20-30% between minutes on this small machine, and a ratio of two figures
taken minutes apart carries that drift.

Timings are only trusted on an idle machine: the 1-minute load average is checked before
anything runs (refused above 0.5 unless ``--allow-busy``), and the cores other processes
used during the run are measured from /proc/stat and printed with the results (a run
beside another job is labelled BUSY).

    .venv/bin/python benchmarks/faiss_index.py --n 1000000 --plot build/faiss/1m.png
    .venv/bin/python benchmarks/faiss_index.py --n 10000000 --queries 4096 --index flat \
        --index ivf_flat:ip_to_l2=true,nlist=12800,train_sample=500000
    .venv/bin/python benchmarks/faiss_index.py --embeddings items.parquet --query-embeddings users.parquet
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

try:
    import recbert  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss

from recbert.config import build_section, parse_overrides
from recbert.errors import RecbertError
from recbert.evaluation.report import pareto_front
from recbert.evaluation.timing import IdleGuard, median_rate, tiled
from recbert.index import (
    INDEX_KINDS,
    IndexConfig,
    VectorIndex,
    read_embeddings_parquet,
    recall_at_k,
)
from recbert.index.auto import TIMING_BATCH, batch_qps, paired_qps

# The 1M x 64 grid (BENCHMARKS.md, issue #11): exact search; the earlier default HNSW;
# IVF-Flat on the MIPS-to-NN reduction with the exact coarse quantizer over ~4,000 and 8,000
# cells, and with the HNSW quantizer over ~4,000 (slower there: the graph walk costs more
# than one matrix product with 4,000 centroids). (HNSW with efConstruction 200-400 and M
# 16-48, on inner product or the reduction, and fast-scan / 8-bit PQ with re-ranking were
# measured too and lost.)
DEFAULT_INDEXES = (
    "flat",
    "hnsw:hnsw_m=32,ef_construction=40",
    "ivf_flat:quantizer=flat,ip_to_l2=true,train_sample=200000",
    "ivf_flat:quantizer=flat,ip_to_l2=true,nlist_factor=8,train_sample=400000",
    "ivf_flat:quantizer=hnsw,ip_to_l2=true,train_sample=200000",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic items")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=10_000, help="queries for batch QPS and recall")
    p.add_argument("--single-queries", type=int, default=300,
                   help="queries searched one at a time for single-query QPS (at most ~5 s)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index", dest="indexes", action="append", metavar="KIND[:key=value,...]",
                   help=f"an index to measure (repeat); kinds {tuple(INDEX_KINDS)}, keys any IndexConfig "
                        f"field; default: {' '.join(DEFAULT_INDEXES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per QPS figure (the median is kept)")
    p.add_argument("--rounds", type=int, default=5,
                   help="summary table: rounds of exact and approximate search timed back to back; "
                        "the speed-up is the median of the rounds' ratios")
    p.add_argument("--wait-idle", type=float, default=300,
                   help="seconds to wait for the load average to fall to 0.5 before refusing")
    p.add_argument("--allow-busy", action="store_true",
                   help="measure even when the load average is above 0.5 (figures are labelled BUSY)")
    p.add_argument("--metric", default="ip", choices=("ip", "cosine", "l2"))
    p.add_argument("--centres", type=int, default=4096, help="mixture components (synthetic data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--embeddings", type=Path, help="real exported item-embedding parquet")
    p.add_argument("--query-embeddings", type=Path,
                   help="real exported USER-embedding parquet used as the queries (with --embeddings; "
                        "default: hold out --queries items as queries)")
    p.add_argument("--id-column", default="item_id")
    p.add_argument("--vector-column", default="embedding")
    p.add_argument("--sweep-queries", type=int, default=2000,
                   help="queries used to sweep nprobe / efSearch (a prefix of --queries)")
    p.add_argument("--no-sweep", action="store_true",
                   help="use the configured nprobe / efSearch only")
    p.add_argument("--auto", action="store_true",
                   help="also run `--kind auto` selection (recbert.index.auto) on the same vectors and queries")
    p.add_argument("--auto-sample", type=int, default=200_000, help="--auto: candidates' sample size")
    p.add_argument("--plot", type=Path, help="write the recall-vs-QPS curve of the sweeps to this PNG")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        args.configs = [index_config(spec, args) for spec in (args.indexes or DEFAULT_INDEXES)]
    except RecbertError as exc:
        p.error(str(exc))
    if args.repeats < 1 or args.rounds < 1:
        p.error("--repeats and --rounds must be >= 1")
    return args


def index_config(spec: str, args: argparse.Namespace) -> IndexConfig:
    """``KIND[:key=value,...]`` as a CPU IndexConfig (values parsed like ``--set``)."""
    kind, _, rest = spec.partition(":")
    overrides = [item for item in rest.split(",") if item.strip()]
    base = IndexConfig(kind=kind.strip(), metric=args.metric, seed=args.seed, device="cpu")
    return build_section(IndexConfig, parse_overrides(overrides), "", base)


# --- data -------------------------------------------------------------------------------


def synthetic(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    """``n`` draws from an embedding-like Gaussian mixture, float32, generated in chunks."""
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.sqrt(np.arange(1, dim + 1))  # anisotropic: a few dominant directions
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    mix = (spectrum[:, None] * basis.T).astype(np.float32)
    means = rng.standard_normal((centres, dim)).astype(np.float32) @ mix
    spread = rng.uniform(0.35, 0.7, size=centres).astype(np.float32)  # per-cluster width
    weights = 1.0 / np.arange(1, centres + 1) ** 0.8  # Zipf-ish cluster sizes
    weights = rng.permutation(weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):
        stop = min(n, start + 200_000)
        labels = rng.choice(centres, size=stop - start, p=weights)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) @ mix
        x = means[labels] + spread[labels, None] * noise
        x *= rng.lognormal(0.0, 0.3, size=(stop - start, 1)).astype(np.float32)
        out[start:stop] = x
    return out


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    if args.embeddings is None:
        x = synthetic(args.n + args.queries, args.dim, args.centres, args.seed)
        ids = np.arange(args.n, dtype=np.int64)
        what = (f"synthetic mixture: {args.n:,} items + {args.queries:,} held-out queries, "
                f"dim {args.dim}, {args.centres} centres, seed {args.seed}")
        return x[: args.n], ids, x[args.n :], what
    ids, vectors, _ = read_embeddings_parquet(args.embeddings, args.id_column, args.vector_column)
    if args.query_embeddings is not None:
        _, users, _ = read_embeddings_parquet(args.query_embeddings, "user_id", args.vector_column)
        if users.shape[1] != vectors.shape[1]:
            sys.exit(f"user vectors have dim {users.shape[1]} but item vectors {vectors.shape[1]}")
        rng = np.random.default_rng(args.seed)
        q = users[np.sort(rng.choice(len(users), size=min(args.queries, len(users)), replace=False))]
        what = (f"{args.embeddings}: {len(vectors):,} items, dim {vectors.shape[1]}; queries: {len(q):,} "
                f"user vectors from {args.query_embeddings}")
        return vectors, ids, q, what
    if args.queries >= len(vectors):
        sys.exit(f"--queries {args.queries} must be smaller than the {len(vectors)} embeddings")
    rng = np.random.default_rng(args.seed)
    held = np.zeros(len(vectors), dtype=bool)
    held[rng.choice(len(vectors), size=args.queries, replace=False)] = True
    what = (f"{args.embeddings}: {int((~held).sum()):,} items + {args.queries:,} held-out items "
            f"as queries, dim {vectors.shape[1]}")
    return vectors[~held], ids[~held], vectors[held], what


# --- measurements -----------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def index_bytes(index: VectorIndex) -> int:
    return int(faiss.serialize_index(index.faiss_index).nbytes)


def batch_search(
    index: VectorIndex, q: np.ndarray, k: int, repeats: int, **override
) -> tuple[np.ndarray, float]:
    """The ids found for ``q`` and the batch QPS (:func:`recbert.index.auto.batch_qps`)."""
    _, ids = index.search(q, k, **override)
    return ids, batch_qps(index, q, k, repeats, **override)


def assignment_qps(index: VectorIndex, q: np.ndarray, nprobe: int, repeats: int) -> float | None:
    """Batch QPS of an IVF index's coarse quantizer alone (finding each query's ``nprobe``
    cells, as a search does before it scans them); ``None`` for other kinds."""
    if not INDEX_KINDS[index.kind].ivf:
        return None
    ivf = faiss.extract_index_ivf(index.faiss_index)
    batch = index.faiss_queries(np.ascontiguousarray(tiled(q, TIMING_BATCH)[:TIMING_BATCH], dtype=np.float32))
    params = index.quantizer_params(nprobe)
    nprobe = min(nprobe, ivf.nlist)
    ivf.quantizer.search(batch[:64], nprobe, params=params)
    qps, _, _ = median_rate(lambda: ivf.quantizer.search(batch, nprobe, params=params), len(batch), repeats)
    return qps


def paired_with_exact(index: VectorIndex, x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int,
                      rounds: int, **override):
    """``index`` (with ``override``) against the exact index in paired rounds on the full
    batch (:func:`recbert.index.auto.paired_qps`). The exact index is built again for this
    (a copy of the vectors, seconds even at 10M) rather than kept through every build, which
    would add its size to each build's peak memory."""
    exact = VectorIndex.build(x, ids, IndexConfig(kind="flat", metric=index.metric, device="cpu"))
    return paired_qps(lambda batch: exact.search(batch, k), index, q, k, rounds, **override)


def single_query_qps(index: VectorIndex, q: np.ndarray, k: int, limit: int, **override) -> float:
    index.search(q[:1], k, **override)  # warm-up
    done, started = 0, time.perf_counter()
    for i in range(min(limit, len(q))):
        index.search(q[i : i + 1], k, **override)
        done += 1
        if time.perf_counter() - started > 5.0:
            break
    return done / (time.perf_counter() - started)


def sweep(cfg: IndexConfig, args: argparse.Namespace) -> tuple[str, tuple[int, ...]]:
    """The built index's search-time parameter and the values to try: the registry's sweep
    (or the configured value with ``--no-sweep``), without values the index cannot use."""
    param = INDEX_KINDS[cfg.kind].search
    values = (getattr(cfg, param.name),) if args.no_sweep else param.sweep
    return param.name, tuple(v for v in values if param.effective(cfg, v) == v)


def label(cfg: IndexConfig) -> str:
    return f"{cfg.kind} {INDEX_KINDS[cfg.kind].describe(cfg)}"


def run_auto(x: np.ndarray, ids: np.ndarray, q: np.ndarray, args: argparse.Namespace) -> None:
    """``--kind auto`` on the benchmark's vectors, its queries given as the held-out queries."""
    from recbert.index.auto import AutoSettings, build_auto

    print("\n--kind auto:")
    started = time.perf_counter()
    settings = AutoSettings(target_recall=args.target_recall, k=args.k, sample=args.auto_sample,
                            queries=min(1000, len(q)), repeats=args.repeats, seed=args.seed)
    index = build_auto(x, ids, IndexConfig(metric=args.metric, seed=args.seed, device="cpu"), settings,
                       queries=q, progress=lambda line: print("  " + line))
    m = index.measured
    print(f"  -> {index.kind} {INDEX_KINDS[index.kind].describe(index.config)}, {m['search']}: recall@{m['k']} "
          f"{m['recall']:.4f}, {m['qps']:,.0f} QPS = {m['speedup']:.1f}x exact ({m['exact_qps']:,.0f}) on "
          f"{m['queries']:,} queries; selection took {time.perf_counter() - started:.0f}s")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    wall = time.perf_counter()
    guard = IdleGuard(refuse=not args.allow_busy)
    if not args.allow_busy:
        guard.wait_until_idle(args.wait_idle)
    try:
        load_start = guard.start()
    except RecbertError as exc:
        sys.exit(f"refusing to time on a busy machine: {exc}")
    x, ids, q, what = load_data(args)
    print(what)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
          f"{os.cpu_count()} CPUs, metric {args.metric}, k {args.k}, median of {args.repeats} runs per QPS, "
          f"load average at start {load_start:.2f}; data ready in {time.perf_counter() - wall:.1f}s")

    k = args.k
    sq = min(args.sweep_queries, len(q))
    started = time.perf_counter()
    exact_index = VectorIndex.build(x, ids, IndexConfig(kind="flat", metric=args.metric, device="cpu"))
    exact_build = time.perf_counter() - started
    exact_ids, exact_qps = batch_search(exact_index, q, k, args.repeats)
    _, exact_sweep_qps = batch_search(exact_index, q[:sq], k, args.repeats)
    rows = []
    points = []  # every sweep point (on the sweep queries), for the Pareto table and --plot
    if any(cfg.kind == "flat" for cfg in args.configs):
        rows.append({
            "label": "flat exact", "params": "exact", "build_s": exact_build,
            "bytes": index_bytes(exact_index), "rss": peak_rss_mib(),
            "qps1": single_query_qps(exact_index, q, k, args.single_queries),
            "qps": exact_qps, "exact_qps": exact_qps, "ratio": 1.0, "recall": 1.0, "assign": None,
        })
    del exact_index

    for cfg in [c for c in args.configs if c.kind != "flat"]:
        started = time.perf_counter()
        index = VectorIndex.build(x, ids, cfg)
        build_s = time.perf_counter() - started
        cfg = index.config
        name, values = sweep(cfg, args)
        print(f"\n{label(cfg)} sweep on {sq:,} queries (built in {build_s:.1f}s; exact {exact_sweep_qps:,.0f} QPS):")
        print(f"  {name:>9}  recall@{k}  batch QPS  vs exact")
        chosen = None
        best = None
        for value in values:
            found, qps = batch_search(index, q[:sq], k, args.repeats, **{name: value})
            recall = recall_at_k(found, exact_ids[:sq], k)
            print(f"  {value:>9}  {recall:9.4f}  {qps:9.0f}  {qps / exact_sweep_qps:7.1f}x")
            points.append({"family": label(cfg), "recall": recall, "qps": qps, "label": f"{name}={value}",
                           "value": value})
            if best is None or recall > best[1]:
                best = (value, recall, qps)
            if recall >= args.target_recall and chosen is None:
                chosen = (value, recall, qps)
            elif chosen is not None or qps < exact_sweep_qps:
                break  # one point past the target shows the trend; slower than exact is moot
        value = (chosen or best)[0]
        _, found = index.search(q, k, **{name: value})  # the full batch
        recall = recall_at_k(found, exact_ids, k)
        paired = paired_with_exact(index, x, ids, q, k, args.rounds, **{name: value})
        print(f"  full batch, {name}={value}: recall {recall:.4f}; {args.rounds} paired rounds, exact / this QPS: "
              + ", ".join(f"{e:,.0f} / {a:,.0f}" for e, a in zip(paired.base_rates, paired.other_rates))
              + f"; median ratio {paired.ratio:.1f}x")
        rows.append({
            "label": label(cfg), "params": f"{INDEX_KINDS[cfg.kind].describe(cfg)}, {name}={value}",
            "build_s": build_s, "bytes": index_bytes(index), "rss": peak_rss_mib(),
            "qps1": single_query_qps(index, q, k, args.single_queries, **{name: value}),
            "qps": paired.other, "exact_qps": paired.base, "ratio": paired.ratio, "recall": recall,
            "assign": assignment_qps(index, q, value, args.repeats) if name == "nprobe" else None,
        })
        del index

    guard.refuse = False  # a busy interval labels the figures below; it does not discard them
    load = guard.stop()
    print(f"\nn={len(x):,} dim={x.shape[1]} queries={len(q):,} k={k}; batch QPS and paired exact QPS = "
          f"medians of {args.rounds} rounds timed back to back with exact search, vs exact = the median "
          f"of the rounds' ratios (exact row: median of {args.repeats}); peak RSS is the process high-water "
          f"mark so far (cumulative); assign QPS: the IVF coarse quantizer alone at that nprobe, "
          f"{TIMING_BATCH:,} queries a batch")
    print(f"machine: {load.line()}")
    header = (f"| {'kind':<9} | {'params':<62} | {'build s':>7} | {'index MiB':>9} | "
              f"{'peak RSS MiB':>12} | {'1-query QPS':>11} | {'batch QPS':>9} | {'paired exact QPS':>16} | "
              f"{'recall@' + str(k):>9} | {'vs exact':>8} | {'assign QPS':>10} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['label'].split()[0]:<9} | {r['params']:<62} | {r['build_s']:7.1f} | "
              f"{r['bytes'] / 2**20:9.1f} | {r['rss']:12.0f} | {r['qps1']:11.0f} | "
              f"{r['qps']:9.0f} | {r['exact_qps']:16.0f} | {r['recall']:9.4f} | {r['ratio']:7.1f}x | "
              + (f"{r['assign']:10.0f} |" if r["assign"] is not None else f"{'-':>10} |"))
    front = pareto_front(points)
    print(f"\nrecall/QPS Pareto front of the sweeps ({sq:,} queries; exact {exact_sweep_qps:,.0f} QPS):")
    print("| index | search | recall@%d | batch QPS | vs exact |" % k)
    print("|---|---|---|---|---|")
    for p in front:
        print(f"| {p['family']} | {p['label']} | {p['recall']:.4f} | {p['qps']:.0f} | "
              f"{p['qps'] / exact_sweep_qps:.1f}x |")
    hits = [r for r in rows if r["params"] != "exact" and r["recall"] >= args.target_recall]
    if hits:
        fastest = max(hits, key=lambda r: r["ratio"])
        print(f"\nfastest index with recall@{k} >= {args.target_recall} on all {len(q):,} queries: "
              f"{fastest['label']} ({fastest['params']}): {fastest['ratio']:.1f}x exact batch QPS "
              f"(median of {args.rounds} paired rounds), "
              f"recall {fastest['recall']:.4f}" + (" [BUSY machine: not trustworthy]" if load.busy else ""))
    else:
        print(f"\nno index reached recall@{k} >= {args.target_recall}")
    if args.auto:
        run_auto(x, ids, q, args)
    if args.plot:
        from recbert.evaluation.plots import recall_qps_curve, save_figure

        save_figure(recall_qps_curve(points, args.target_recall, exact_sweep_qps), args.plot)
        print(f"recall-vs-QPS curve: {args.plot}")
    print(f"total wall time {time.perf_counter() - wall:.1f}s")


if __name__ == "__main__":
    main()
