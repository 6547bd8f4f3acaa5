"""Process set-up shared by every job: seeds and the random states a checkpoint saves,
torch threads, the device and, under torchrun, the process group of distributed training
(:class:`DistributedContext`)."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

import numpy as np
import torch

from recbert.errors import ConfigError, Interrupted

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The random states of python, numpy (legacy global), torch CPU and every CUDA device."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def numpy_generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's bit-generator state in a form ``weights_only`` loading accepts
    (its 128-bit integers as decimal strings)."""
    return _ints_to_str(rng.bit_generator.state)


def set_numpy_generator_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = _str_to_ints(state)


def _ints_to_str(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ints_to_str(v) for k, v in value.items()}
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"int:{int(value)}"
    return value


def _str_to_ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _str_to_ints(v) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("int:"):
        return int(value[4:])
    return value


@contextmanager
def interruptible() -> Iterator[None]:
    """Within: SIGTERM raises :class:`~recbert.errors.Interrupted` (exit code 143) in the
    main thread, as Ctrl-C raises KeyboardInterrupt, so that a job ends its MLflow run as
    KILLED and says where its checkpoint is; the previous handler is restored after.
    Off the main thread (where signals cannot be handled) it does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if _HELD["depth"]:  # inside uninterrupted(): raised when the block ends
            _HELD["pending"] = Interrupted("terminated (SIGTERM)", 128 + signum)
            return
        raise Interrupted("terminated (SIGTERM)", 128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_HELD: dict = {"depth": 0, "pending": None}


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Within: a SIGTERM that :func:`interruptible` turns into ``Interrupted``, and a Ctrl-C,
    are held and raised when the block ends, so that what the block writes (a checkpoint
    file and its rename) is whole; a block that fails raises its own error. Off the main
    thread it only holds what :func:`interruptible` would raise."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()

    def hold_ctrl_c(signum, frame):
        _HELD["pending"] = KeyboardInterrupt()

    previous = signal.signal(signal.SIGINT, hold_ctrl_c) if main and _HELD["depth"] == 0 else None
    _HELD["depth"] += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _HELD["depth"] -= 1
        if _HELD["depth"] == 0:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            pending, _HELD["pending"] = _HELD["pending"], None
            if pending is not None and not failed:
                raise pending


def set_threads(threads: Optional[int]) -> None:
    """torch intra-op threads (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``'auto'``: CUDA when available, else CPU; otherwise the named torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1', ...): {exc}") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asks for CUDA, but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (torchrun) job: its ``rank`` among ``world_size``
    processes, its ``local_rank`` on its node and the ``device`` it trains on. A single
    process is rank 0 of world size 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def init_distributed(device_name: str) -> DistributedContext:
    """The context of this process, with the process group initialised when torchrun
    started more than one: backend ``nccl`` on CUDA (device ``cuda:LOCAL_RANK``),
    ``gloo`` otherwise. A single process initialises nothing."""
    rank, world_size, local_rank = torchrun_ranks()
    device = resolve_device(device_name)
    if world_size == 1:
        return DistributedContext(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} not set: start distributed "
                          "training with torchrun")
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank,
                                         world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, device)


def shutdown_distributed(context: DistributedContext) -> None:
    """Destroy the process group :func:`init_distributed` created (nothing for one process)."""
    if context.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def distributed(device_name: str) -> Iterator[DistributedContext]:
    """:func:`init_distributed` for the duration of a job, shut down at its end (after a
    barrier when the job ended normally: a rank that tears its connections down while
    another still uses them can abort the other at gloo's teardown)."""
    context = init_distributed(device_name)
    try:
        yield context
        if context.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()
    finally:
        shutdown_distributed(context)


def on_main(fn: Callable[[], T], context: DistributedContext) -> T:
    """``fn()`` run on rank 0 only; every rank returns its result, or raises its error,
    so that all ranks take the same decision. A single process just calls ``fn``."""
    if not context.distributed:
        return fn()
    payload: list[Any] = [None]
    if context.is_main:
        try:
            payload[0] = (fn(), None)
        except Exception as exc:  # re-raised on every rank below
            payload[0] = (None, exc)
    torch.distributed.broadcast_object_list(payload, src=0, device=_collective_device(context))
    value, error = payload[0]
    if error is not None:
        raise error
    return value


def _collective_device(context: DistributedContext) -> Optional[torch.device]:
    """The device object collectives stage their tensors on: the GPU under nccl, else CPU."""
    return context.device if context.device.type == "cuda" else None


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a per-rank random stream: ``seed`` itself on rank 0 (a single process
    is unchanged), an independent one derived from ``(seed, rank)`` on the other ranks."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
