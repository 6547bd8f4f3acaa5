"""Faiss retrieval over exported user / item embeddings."""

from recbert.index.blas import use_blas_from_small_batches
from recbert.index.device import gpu_available, resolve_device
from recbert.index.faiss_index import (
    PAD_ID,
    VectorIndex,
    read_embeddings_parquet,
    recall_at_k,
)
from recbert.index.spec import (
    INDEX_KINDS,
    KINDS,
    IndexConfig,
    IndexConfigError,
    IndexDeviceError,
    IndexFileError,
    IndexFileMissingError,
    IndexInputError,
    IndexKindSpec,
    SearchParam,
)

use_blas_from_small_batches()  # faiss' exact distances by BLAS from ~20 queries (index/blas.py)

__all__ = [
    "INDEX_KINDS",
    "KINDS",
    "PAD_ID",
    "IndexConfig",
    "IndexConfigError",
    "IndexDeviceError",
    "IndexFileError",
    "IndexFileMissingError",
    "IndexInputError",
    "IndexKindSpec",
    "SearchParam",
    "VectorIndex",
    "gpu_available",
    "read_embeddings_parquet",
    "recall_at_k",
    "resolve_device",
]
