"""faiss' BLAS threshold: lowered on import of recbert.index unless someone chose a value,
and the BLAS path finds the same neighbours as faiss' own loop."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import recbert.index  # noqa: F401  (the import lowers the threshold)
from recbert.index import IndexConfig, VectorIndex
from recbert.index.blas import FAISS_DEFAULT_THRESHOLD, THRESHOLD, use_blas_from_small_batches


@pytest.fixture
def threshold():
    before = faiss.cvar.distance_compute_blas_threshold
    yield
    faiss.cvar.distance_compute_blas_threshold = before


def test_the_import_lowered_it_and_a_chosen_value_is_kept(threshold):
    assert faiss.cvar.distance_compute_blas_threshold == THRESHOLD
    faiss.cvar.distance_compute_blas_threshold = FAISS_DEFAULT_THRESHOLD
    assert use_blas_from_small_batches() == THRESHOLD
    faiss.cvar.distance_compute_blas_threshold = 5000
    assert use_blas_from_small_batches() == 5000


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_both_paths_find_the_same_neighbours(threshold, metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    q = rng.standard_normal((200, 16)).astype(np.float32)  # 200 * 16 = 3,200: BLAS only when lowered
    index = VectorIndex.build(x, np.arange(3000), IndexConfig(kind="flat", metric=metric, device="cpu"))
    faiss.cvar.distance_compute_blas_threshold = FAISS_DEFAULT_THRESHOLD
    loop_scores, loop_ids = index.search(q, 10)
    faiss.cvar.distance_compute_blas_threshold = THRESHOLD
    blas_scores, blas_ids = index.search(q, 10)
    np.testing.assert_array_equal(blas_ids, loop_ids)
    np.testing.assert_allclose(blas_scores, loop_scores, rtol=1e-4, atol=1e-4)
