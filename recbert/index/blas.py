"""When faiss computes exact distances with BLAS.

faiss (1.15 here) computes a batch of ``nx`` queries of dimension ``d`` against a flat set of
vectors with its own loop while ``nx * d`` is below ``distance_compute_blas_threshold``
(default 128,000: 2,000 queries of dimension 64) and with a BLAS matrix product above it.
On these machines the loop ran 2-11x slower from ~16 queries up (exact search of 256
queries over 1M x 64: 35 vs 400 queries/s; an 8,000-centroid quantizer, 1,000 queries: 6,000
vs 13,000), and it is hit far more often than the batch size suggests: an IVF search hands
each thread its slice of the batch, whose coarse assignment is such a flat search, so a
3,334-query block on 2 threads (1,667 a thread) ran at 2/3 the speed of a 4,096-query one
(BENCHMARKS.md, "faiss' BLAS threshold"). :func:`use_blas_from_small_batches` lowers the
threshold to 20 queries of dimension 64, where older faiss switched (it counted queries
then); a single query keeps the loop. Importing :mod:`recbert.index` calls it.
"""

from __future__ import annotations

import faiss

FAISS_DEFAULT_THRESHOLD = 128_000  # nx * d, faiss' shipped value
THRESHOLD = 20 * 64  # nx * d: about 20 queries of dimension 64


def use_blas_from_small_batches() -> int:
    """Lower faiss' BLAS threshold (module docstring) unless it was changed from faiss'
    default (a value the caller chose, or an older faiss that counts queries); returns the
    threshold in force."""
    if faiss.cvar.distance_compute_blas_threshold == FAISS_DEFAULT_THRESHOLD:
        faiss.cvar.distance_compute_blas_threshold = THRESHOLD
    return int(faiss.cvar.distance_compute_blas_threshold)
