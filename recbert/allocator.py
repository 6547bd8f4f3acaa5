"""The memory allocator of recbert's processes.

A training step allocates and frees tensors of hundreds of MB (the logits at target
positions), which glibc's malloc hands back to the kernel every time (mmap above 32
MiB), so a third of the CPU time went to page faults. jemalloc told to keep freed pages
(``MALLOC_CONF`` below) removes that: measured on Beauty, next-item epoch 12.7 -> 8.9 s,
full-ranking evaluation 4.0 -> 1.65 s, system time 37 -> 3.7 s (BENCHMARKS.md). A process
can only choose its allocator at start, so :func:`reexec_with_fast_allocator` re-runs the
command under jemalloc when it is installed (Debian/Ubuntu: ``libjemalloc2``) and
``RECBERT_ALLOCATOR`` is not ``system``.

Kept pages are not always reused: a GRU/LSTM block's training steps make jemalloc map new
pages while it holds ~0.5 MB per step of freed ones (RSS grew without bound, ~100 MB per
Beauty epoch; flat under glibc). :func:`release_free_memory` hands the kept pages back; the
training loop calls it every epoch and every ``RELEASE_EVERY_STEPS`` steps, which bounds the
growth at the cost of faulting the working set in again (a fraction of a second).
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import sys
from typing import Callable, Optional, Sequence


JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1,background_thread:false"  # keep freed pages
_REEXEC_MARK = "RECBERT_ALLOCATOR_SET"
_ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL
RELEASE_EVERY_STEPS = 256  # training steps between release_free_memory calls (module docstring)


def fast_allocator_env(environ: Optional[dict] = None) -> Optional[dict]:
    """The environment that runs a new process under jemalloc keeping its freed pages, or
    None: jemalloc not installed, already preloaded, or ``RECBERT_ALLOCATOR=system``."""
    env = dict(os.environ if environ is None else environ)
    if env.get("RECBERT_ALLOCATOR", "jemalloc") == "system" or env.get(_REEXEC_MARK):
        return None
    if "jemalloc" in env.get("LD_PRELOAD", ""):
        return None
    library = ctypes.util.find_library("jemalloc")
    if library is None:
        return None
    env["LD_PRELOAD"] = " ".join(p for p in (env.get("LD_PRELOAD", ""), library) if p)
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    env[_REEXEC_MARK] = "1"
    return env


def reexec_with_fast_allocator(argv: Optional[Sequence[str]] = None) -> None:
    """Run this command again (``argv``, default ``sys.argv``: the script and its
    arguments) under jemalloc, replacing this process (module docstring); returns
    without doing anything when :func:`fast_allocator_env` says no."""
    env = fast_allocator_env()
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *(sys.argv if argv is None else argv)], env)


def _on_jemalloc() -> bool:
    return "jemalloc" in os.environ.get("LD_PRELOAD", "")


def allocator_name() -> str:
    """Which allocator this process runs on, for benchmark reports."""
    if _on_jemalloc():
        return f"jemalloc (MALLOC_CONF={os.environ.get('MALLOC_CONF', '')})"
    return "glibc malloc"


@functools.lru_cache(maxsize=1)
def _mallctl() -> Optional[Callable[..., int]]:
    """jemalloc's ``mallctl`` in this process (looked up once), or None."""
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except AttributeError:  # preloaded name without the library's symbols
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return mallctl


def release_free_memory() -> bool:
    """Hand the freed pages jemalloc keeps (``JEMALLOC_CONF``) back to the kernel, in every
    arena; True when it did, False when this process does not run on jemalloc."""
    mallctl = _mallctl() if _on_jemalloc() else None
    return mallctl is not None and mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0) == 0
