"""The destination circuit breaker's state machine (interop.writeback.breaker), on a fake clock."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from interop.writeback.breaker import BreakerSettings, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breaker(threshold: int = 3, reset: float = 10, cap: float = 40) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerSettings(failure_threshold=threshold, reset_seconds=reset, max_reset_seconds=cap),
                          clock=clock), clock


def test_opens_after_threshold_consecutive_retryable_failures() -> None:
    b, clock = breaker(threshold=3)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.CLOSED and b.opened_at is None and b.retry_at is None
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert b.opened_at == clock.now and b.retry_at == clock.now + 10
    assert not b.allow()


def test_success_resets_the_count_of_failures() -> None:
    b, _ = breaker(threshold=3)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().consecutive_failures == 2


def test_non_retryable_failures_never_trip_it() -> None:
    b, _ = breaker(threshold=2)
    for _ in range(10):
        b.record_failure(retryable=False)
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record_failure()
    b.record_failure(retryable=False)  # the peer answered: the streak of unreachable is broken
    b.record_failure()
    assert b.state is BreakerState.CLOSED


def test_open_refuses_until_reset_then_half_open_allows_exactly_one_probe() -> None:
    b, clock = breaker(threshold=1, reset=10)
    b.record_failure()
    clock.advance(9.9)
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow() and not b.allow()  # nobody else while it is out
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()
    assert b.opened_at is None and b.retry_at is None


def test_failed_probe_reopens_with_doubled_reset_up_to_the_cap() -> None:
    b, clock = breaker(threshold=1, reset=10, cap=25)
    b.record_failure()
    waits = []
    for _ in range(4):
        retry_at = b.retry_at
        assert retry_at is not None
        waits.append(retry_at - clock.now)
        clock.now = retry_at
        assert b.allow()
        b.record_failure()
        assert b.state is BreakerState.OPEN and b.opened_at == clock.now
    assert waits == [10, 20, 25, 25]
    clock.advance(25)
    assert b.allow()
    b.record_success()
    b.record_failure()  # threshold 1: open again, with the base interval
    assert b.retry_at == clock.now + 10
    assert b.snapshot().times_opened == 6


def test_non_retryable_probe_outcome_closes_the_breaker() -> None:
    b, clock = breaker(threshold=1)
    b.record_failure()
    clock.advance(10)
    assert b.allow()
    b.record_failure(retryable=False)  # the peer is up; it refused that object
    assert b.state is BreakerState.CLOSED


def test_lost_probe_lets_another_probe_go_after_reset_seconds() -> None:
    b, clock = breaker(threshold=1, reset=10)
    b.record_failure()
    clock.advance(10)
    assert b.allow()
    clock.advance(9)
    assert not b.allow()
    clock.advance(1)  # the first probe never reported back
    assert b.allow()
    assert not b.allow()


def test_late_failure_while_open_does_not_extend_the_timer() -> None:
    b, clock = breaker(threshold=1, reset=10)
    b.record_failure()
    retry_at = b.retry_at
    clock.advance(5)
    b.record_failure()  # a delivery that started before the breaker opened
    assert b.retry_at == retry_at and b.state is BreakerState.OPEN


def test_only_one_of_many_threads_gets_the_probe() -> None:
    b, clock = breaker(threshold=1)
    b.record_failure()
    clock.advance(10)
    start = threading.Barrier(16)
    granted: list[bool] = []

    def probe() -> None:
        start.wait()
        granted.append(b.allow())

    threads = [threading.Thread(target=probe) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 1


def test_settings_refuse_a_cap_below_the_base_interval() -> None:
    with pytest.raises(ValidationError, match="max_reset_seconds"):
        BreakerSettings(reset_seconds=60, max_reset_seconds=30)
    with pytest.raises(ValidationError):
        BreakerSettings(failure_threshold=0)
