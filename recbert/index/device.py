"""Choosing between CPU and GPU faiss, and moving indexes between them.

Tests replace :func:`gpu_available`, :func:`index_to_gpu` and :func:`index_to_cpu` with
``monkeypatch``; the rest of the package only calls them through this module.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import faiss

from recbert.index.spec import DEVICES, IndexConfigError, IndexDeviceError

logger = logging.getLogger("recbert.index")

_GPU_RESOURCES: dict[int, Any] = {}
_GPU_LOCK = threading.Lock()


def gpu_unavailable_reason() -> str | None:
    """Why faiss cannot use a GPU here, or ``None`` when it can."""
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "index_cpu_to_gpu"):
        return "this faiss build has no GPU support (faiss-cpu is installed, not faiss-gpu)"
    try:
        count = int(faiss.get_num_gpus())
    except Exception as exc:  # a broken CUDA driver surfaces here
        return f"faiss.get_num_gpus() failed: {exc}"
    if count <= 0:
        return "faiss was built with GPU support but sees no GPU (faiss.get_num_gpus() == 0)"
    return None


def gpu_available() -> bool:
    """Whether faiss can put indexes on a GPU. Independent of ``torch.cuda``."""
    return gpu_unavailable_reason() is None


def resolve_device(requested: str) -> str:
    """Map a requested device (``auto``/``cpu``/``gpu``) to the one used: ``cpu`` or ``gpu``.

    Raises :class:`IndexDeviceError` when ``gpu`` is requested but faiss has no usable GPU.
    """
    if requested not in DEVICES:
        raise IndexConfigError(
            f"device={requested!r} is not one of {', '.join(repr(d) for d in DEVICES)}"
        )
    if requested == "cpu":
        logger.info("faiss index on CPU: device='cpu' requested")
        return "cpu"
    if gpu_available():
        logger.info("faiss index on GPU: device=%r requested and faiss sees a GPU", requested)
        return "gpu"
    reason = gpu_unavailable_reason() or "gpu_available() returned False"
    if requested == "gpu":
        raise IndexDeviceError(
            f"device='gpu' was requested but {reason}; use device='auto' or 'cpu', "
            f"or install a faiss build with GPU support"
        )
    logger.info("faiss index on CPU: device='auto' and %s", reason)
    return "cpu"


def _resources(device_id: int) -> Any:
    # One StandardGpuResources per GPU for the whole process: GPU indexes keep a raw
    # pointer to it, so it must outlive every index created with it.
    with _GPU_LOCK:
        if device_id not in _GPU_RESOURCES:
            _GPU_RESOURCES[device_id] = faiss.StandardGpuResources()
        return _GPU_RESOURCES[device_id]


def index_to_gpu(index: Any, device_id: int = 0) -> Any:
    """A GPU copy of the CPU faiss ``index`` (flat and IVF kinds; not HNSW)."""
    return faiss.index_cpu_to_gpu(_resources(device_id), device_id, index)


def index_to_cpu(index: Any) -> Any:
    """A CPU copy of the GPU faiss ``index``."""
    return faiss.index_gpu_to_cpu(index)
