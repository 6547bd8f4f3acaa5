"""Tests for recbert.evaluation.timing: the idle-machine guard (stubbed readers) and medians."""

from __future__ import annotations

import logging

import pytest

from recbert.evaluation.timing import (
    BusyMachineError,
    IdleGuard,
    Readers,
    machine_busy_seconds,
    median_rate,
    own_busy_seconds,
    paired_rates,
)


class FakeMachine:
    """A machine whose load average, busy CPU seconds and clock the test sets."""

    def __init__(self, load: float = 0.1) -> None:
        self.load = load
        self.machine = 1000.0
        self.own = 10.0
        self.now = 0.0
        self.proc = True

    def readers(self) -> Readers:
        return Readers(load_average=lambda: self.load,
                       machine_busy=lambda: self.machine if self.proc else None,
                       own_busy=lambda: self.own, clock=lambda: self.now)

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.machine += (own_cores + other_cores) * seconds


def test_an_idle_machine_passes_and_counts_only_other_processes():
    m = FakeMachine(load=0.05)
    guard = IdleGuard(readers=m.readers(), refuse=True)
    guard.start()
    m.run(100, own_cores=2.0, other_cores=0.1)  # our own two busy threads are not contention
    m.load = 2.0  # ... though they raise the load average
    report = guard.stop()
    assert report.others_during == pytest.approx(0.1)
    assert report.load_before == 0.05 and report.load_after == 2.0
    assert report.seconds == 100 and not report.busy
    assert "idle" in report.line() and "0.10 cores" in report.line()
    assert report.as_dict()["busy"] is False


def test_a_busy_start_is_refused_or_warned(caplog):
    m = FakeMachine(load=1.3)
    with pytest.raises(BusyMachineError, match="load average 1.30 is above 0.5"):
        IdleGuard(readers=m.readers(), refuse=True).start()
    with caplog.at_level(logging.WARNING, logger="recbert.timing"):
        guard = IdleGuard(readers=m.readers())
        guard.start()
        m.run(10, own_cores=1, other_cores=0)
        report = guard.stop()
    assert report.busy and "BUSY" in report.line()
    assert "load average 1.30" in caplog.text


def test_another_process_during_the_timing_is_detected(caplog):
    m = FakeMachine(load=0.0)
    guard = IdleGuard(limit=0.5, readers=m.readers(), refuse=True)
    guard.start()
    m.run(50, own_cores=1.0, other_cores=0.9)
    with pytest.raises(BusyMachineError, match="other processes used 0.90 cores"):
        guard.stop()
    assert guard.report is not None and guard.report.busy
    m2 = FakeMachine(load=0.0)
    with caplog.at_level(logging.WARNING, logger="recbert.timing"):
        with IdleGuard(readers=m2.readers()) as g:
            m2.run(50, own_cores=1.0, other_cores=0.9)
    assert g.report.busy and "0.90 cores" in caplog.text


def test_without_proc_the_interval_is_unmeasured_not_idle():
    m = FakeMachine(load=0.0)
    m.proc = False
    with IdleGuard(readers=m.readers()) as guard:
        m.run(5, 1, 5)
    assert guard.report.others_during is None and not guard.report.busy
    assert "unmeasured" in guard.report.line()


def test_the_real_readers_read_this_machine():
    busy = machine_busy_seconds()
    assert busy is None or busy > 0
    assert own_busy_seconds() > 0
    with pytest.raises(RuntimeError, match="before start"):
        IdleGuard().stop()
    with pytest.raises(ValueError):
        IdleGuard(limit=-1)


def test_median_rate_takes_the_median_of_repeats():
    durations = iter([2.0, 1.0, 4.0])
    now = [0.0]
    calls = []

    def clock():
        return now[0]

    def run():
        now[0] += next(durations)
        calls.append(1)
        return len(calls)

    median, rates, last = median_rate(run, count=100, repeats=3, clock=clock)
    assert rates == [50.0, 100.0, 25.0] and median == 50.0 and last == 3
    with pytest.raises(ValueError):
        median_rate(run, 1, repeats=0)


def test_waiting_for_the_load_to_fall():
    m = FakeMachine(load=2.0)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        m.load /= 2

    guard = IdleGuard(readers=m.readers(), refuse=True)
    assert guard.wait_until_idle(60, poll=5, sleep=sleep) == 0.5 and slept == [5, 5]  # at the limit is idle
    m.load = 3.0
    assert guard.wait_until_idle(10, poll=5, sleep=lambda s: None) == 3.0  # gives up after the timeout


def test_paired_rates_cancel_a_drifting_machine_and_alternate_the_order():
    # the machine's speed drifts by round (x1, x3, x1.5, x2, x1); other is always 10x faster
    slowdown = iter([1.0, 1.0, 3.0, 3.0, 1.5, 1.5, 2.0, 2.0, 1.0, 1.0])
    now = [0.0]
    order = []

    def clock():
        return now[0]

    def base():
        order.append("base")
        now[0] += 1.0 * next(slowdown)

    def other():
        order.append("other")
        now[0] += 0.1 * next(slowdown)

    paired = paired_rates(base, other, count=100, rounds=5, clock=clock)
    assert paired.ratio == pytest.approx(10.0) and all(r == pytest.approx(10.0) for r in paired.ratios)
    assert paired.base_rates == pytest.approx((100, 100 / 3, 100 / 1.5, 50, 100))
    assert paired.base == pytest.approx(100 / 1.5) and paired.other == pytest.approx(1000 / 1.5)
    assert order == ["base", "other", "other", "base", "base", "other", "other", "base", "base", "other"]
    # one disturbed round (base slowed 5x in the second) does not move the median ratio
    slowdown = iter([1.0, 1.0, 1.0, 5.0, 1.0, 1.0])
    assert paired_rates(base, other, count=100, rounds=3, clock=clock).ratio == pytest.approx(10.0)
    with pytest.raises(ValueError):
        paired_rates(base, other, 1, rounds=0)
