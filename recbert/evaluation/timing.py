"""Timings that can be trusted: an idle-machine guard and the median of repeated runs.

On a small machine a second busy process distorts every speed figure, and not evenly: a
BLAS-bound exact search loses far more to contention than a graph search, so a speed-up
measured beside another job flatters the approximate index. :class:`IdleGuard` checks the
machine before a measurement (the 1-minute load average, while nothing of ours runs yet)
and, during it, how many cores *other* processes used (the whole machine's busy CPU time
from ``/proc/stat`` minus this process's own), so a figure can be refused or labelled.
:func:`median_rate` repeats a timed call and keeps the median; :func:`paired_rates` times
two calls in alternation for a speed ratio both sides of which saw the same machine.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recbert.errors import RecbertError

logger = logging.getLogger("recbert.timing")

# Above this many cores' worth of other work, a timing on this machine is not trusted.
BUSY_LIMIT = 0.5


class BusyMachineError(RecbertError, RuntimeError):
    """Other processes kept the machine busy while a timing was to be taken."""


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has been busy since boot (``/proc/stat``:
    user + nice + system + irq + softirq + steal), or ``None`` where there is no ``/proc``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks + [0] * (8 - len(ticks))
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    """CPU seconds this process (all its threads) and its waited-for children have used."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(frozen=True)
class Readers:
    """Where :class:`IdleGuard` reads the machine from; tests pass stand-ins."""

    load_average: Callable[[], float] = lambda: os.getloadavg()[0]
    machine_busy: Callable[[], float | None] = machine_busy_seconds
    own_busy: Callable[[], float] = own_busy_seconds
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class LoadReport:
    """What the guard saw: the load average before, other processes' mean cores during the
    interval (``None`` when unmeasurable), and whether either was above ``limit``."""

    load_before: float
    others_during: float | None
    load_after: float
    seconds: float
    limit: float

    check_start: bool = True

    @property
    def busy(self) -> bool:
        return (self.check_start and self.load_before > self.limit) or (
            self.others_during is not None and self.others_during > self.limit
        )

    def line(self) -> str:
        during = ("unmeasured (no /proc/stat)" if self.others_during is None
                  else f"{self.others_during:.2f} cores")
        verdict = "BUSY: timings are not trustworthy" if self.busy else "idle"
        return (f"load average {self.load_before:.2f} before; other processes used {during} "
                f"on average over {self.seconds:.0f}s; load average {self.load_after:.2f} after "
                f"(includes this run); limit {self.limit:g}: {verdict}")

    def as_dict(self) -> dict[str, Any]:
        return {"load_before": self.load_before, "others_during": self.others_during,
                "load_after": self.load_after, "seconds": self.seconds, "limit": self.limit,
                "busy": self.busy}


class IdleGuard:
    """Check that the machine is idle before and during a measurement.

    ``start()`` reads the load average (and refuses with :class:`BusyMachineError` when
    ``refuse`` and it is above ``limit``, else warns); ``stop()`` returns a
    :class:`LoadReport` with the cores other processes used meanwhile (refusing or warning
    the same way). Use as a context manager to get both; ``report`` holds the result.
    """

    def __init__(self, limit: float = BUSY_LIMIT, *, refuse: bool = False,
                 readers: Readers | None = None, check_start: bool = True) -> None:
        if not limit >= 0:
            raise ValueError(f"limit={limit!r} must be >= 0")
        self.limit = float(limit)
        self.refuse = refuse
        self.check_start = check_start  # False: the caller's own recent work is in the load average
        self.readers = readers or Readers()
        self.report: LoadReport | None = None
        self._start: tuple[float, float | None, float, float] | None = None

    def wait_until_idle(self, timeout: float, poll: float = 5.0,
                        sleep: Callable[[float], None] = time.sleep) -> float:
        """Wait (up to ``timeout`` seconds) for the load average to fall to ``limit``: it
        lags a finished job by a minute or two. Returns the last reading."""
        waited = 0.0
        load = float(self.readers.load_average())
        while load > self.limit and waited < timeout:
            sleep(poll)
            waited += poll
            load = float(self.readers.load_average())
        return load

    def start(self) -> float:
        r = self.readers
        load = float(r.load_average())
        if load > self.limit and self.check_start:
            self._complain(f"load average {load:.2f} is above {self.limit:g} before the timing "
                           f"started: another process is using the CPU")
        self._start = (load, r.machine_busy(), r.own_busy(), r.clock())
        return load

    def stop(self) -> LoadReport:
        if self._start is None:
            raise RuntimeError("IdleGuard.stop() before start()")
        r = self.readers
        load_before, machine0, own0, t0 = self._start
        machine1, own1, t1 = r.machine_busy(), r.own_busy(), r.clock()
        seconds = max(t1 - t0, 1e-9)
        others = None
        if machine0 is not None and machine1 is not None:
            others = max(0.0, ((machine1 - machine0) - (own1 - own0)) / seconds)
        self.report = LoadReport(load_before, others, float(r.load_average()), t1 - t0, self.limit,
                                 self.check_start)
        if others is not None and others > self.limit:
            self._complain(f"other processes used {others:.2f} cores on average during the "
                           f"timing (limit {self.limit:g}): its figures are distorted")
        return self.report

    def _complain(self, message: str) -> None:
        if self.refuse:
            raise BusyMachineError(message + "; run it on an idle machine (or allow a busy one)")
        logger.warning("%s", message)

    def __enter__(self) -> IdleGuard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.stop()


def median_rate(run: Callable[[], Any], count: int, repeats: int = 3,
                clock: Callable[[], float] = time.perf_counter) -> tuple[float, list[float], Any]:
    """Call ``run()`` ``repeats`` times; ``(median of count / seconds, every rate, the last
    call's result)``. ``count`` is the work one call does (e.g. queries searched)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    rates, result = [], None
    for _ in range(repeats):
        started = clock()
        result = run()
        rates.append(count / max(clock() - started, 1e-12))
    return statistics.median(rates), rates, result


def tiled(rows: Any, minimum: int) -> Any:
    """``rows`` repeated (whole, then a prefix) to at least ``minimum`` rows, for timing a
    batch search at a batch size where the library runs at its usual speed (faiss' exact
    search of 1,000-1,999 queries over 1M vectors ran ~5x slower per query than of 2,000+
    until recbert lowered its BLAS threshold: recbert.index.blas)."""
    import numpy as np

    if len(rows) >= minimum or len(rows) == 0:
        return rows
    reps = -(-minimum // len(rows))
    return np.concatenate([rows] * reps)[:max(minimum, len(rows))]


@dataclass(frozen=True)
class PairedRates:
    """Two calls timed in alternation (:func:`paired_rates`): each one's median rate and the
    median over rounds of ``other / base`` taken within the same round."""

    base_rates: tuple[float, ...]
    other_rates: tuple[float, ...]

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(o / b for b, o in zip(self.base_rates, self.other_rates))

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def base(self) -> float:
        return statistics.median(self.base_rates)

    @property
    def other(self) -> float:
        return statistics.median(self.other_rates)


def paired_rates(base: Callable[[], Any], other: Callable[[], Any], count: int, rounds: int = 5,
                 clock: Callable[[], float] = time.perf_counter) -> PairedRates:
    """Time ``base()`` and ``other()`` (each doing ``count`` units of work) in ``rounds``
    back-to-back pairs, alternating which goes first, and return both median rates and the
    median of the per-round speed ratios ``other / base``.

    A speed-up is a ratio of two timings; taken far apart, each sees a different machine
    (turbo, cache and memory state drift by 20-30% between minutes on a small VM), so the
    ratio carries both drifts. Paired in one round, both see nearly the same state, and the
    median over rounds drops the odd disturbed round."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be >= 1")

    def rate(run: Callable[[], Any]) -> float:
        started = clock()
        run()
        return count / max(clock() - started, 1e-12)

    base_rates, other_rates = [], []
    for i in range(rounds):
        if i % 2 == 0:
            b = rate(base)
            o = rate(other)
        else:
            o = rate(other)
            b = rate(base)
        base_rates.append(b)
        other_rates.append(o)
    return PairedRates(tuple(base_rates), tuple(other_rates))
