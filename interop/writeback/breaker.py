"""A circuit breaker per write-back destination: stop knocking on a peer that is down, try again later.

States (the classic pattern, M. Nygard, *Release It!*, "Circuit Breaker")::

    closed ──(failure_threshold consecutive retryable failures)──▶ open
    open ──(reset timer runs out)──▶ half-open
    half-open ──(the one probe succeeds)──▶ closed
    half-open ──(the probe fails, retryable)──▶ open again, with the reset timer doubled

* **closed**: every delivery may go; retryable failures are counted, any success or any answer from the peer
  resets the count.
* **open**: no delivery may go until ``retry_at`` (``opened_at`` + the current reset interval).
* **half-open**: exactly one delivery (the probe) may go. Its outcome decides. A probe whose outcome is never
  reported (its caller died) is presumed lost after one base ``reset_seconds``, and another probe may go.

The reset interval starts at ``reset_seconds`` and doubles each time a probe fails, up to
``max_reset_seconds``; closing the breaker brings it back to ``reset_seconds``. So a PACS that is down for
the night is probed every few minutes, not every 30 seconds, and one that comes back after a short blip is
used again quickly.

A **non-retryable** failure (the peer answered and refused that object: C-STORE A9xx/Cxxx, HTTP 400/422, a
STOW FailedSOPSequence) proves the peer is up: it counts as a success for the breaker, never as a failure.

Pure and thread-safe: no I/O, one lock, and an injectable clock (``time.monotonic`` by default; pass
``time.time`` where ``opened_at``/``retry_at`` must be wall-clock times).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class BreakerSettings(BaseModel):
    """Circuit-breaker settings of one destination (``breaker = {failure_threshold = 5, ...}``)."""

    model_config = ConfigDict(extra="forbid")

    #: Consecutive retryable failures that open the breaker.
    failure_threshold: int = Field(5, ge=1)
    #: Seconds the breaker stays open before the first probe.
    reset_seconds: float = Field(30.0, gt=0)
    #: Cap of the reset interval, which doubles after each failed probe.
    max_reset_seconds: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> BreakerSettings:
        if self.max_reset_seconds < self.reset_seconds:
            raise ValueError("breaker.max_reset_seconds must be >= breaker.reset_seconds")
        return self


@dataclass(frozen=True)
class BreakerSnapshot:
    """The breaker's state at one moment (for logs and the write-back API)."""

    state: BreakerState
    consecutive_failures: int
    #: Clock time the breaker last opened; None while closed.
    opened_at: float | None
    #: Clock time from which a probe may go; None while closed.
    retry_at: float | None
    #: Current reset interval (doubles after each failed probe, up to the cap).
    reset_seconds: float
    #: How many times the breaker has opened since it was made.
    times_opened: int


class CircuitBreaker:
    """Circuit breaker of one destination. See the module docstring for the state machine."""

    def __init__(self, settings: BreakerSettings | None = None, *, clock: Callable[[], float] = time.monotonic,
                 name: str = "") -> None:
        self.settings = settings or BreakerSettings()
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._interval = self.settings.reset_seconds
        self._probe_started: float | None = None
        self._times_opened = 0

    # -- reading -----------------------------------------------------------------------------------------------

    def _state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now < self._opened_at + self._interval:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    @property
    def opened_at(self) -> float | None:
        with self._lock:
            return self._opened_at

    @property
    def retry_at(self) -> float | None:
        with self._lock:
            return None if self._opened_at is None else self._opened_at + self._interval

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            now = self._clock()
            return BreakerSnapshot(
                state=self._state(now), consecutive_failures=self._failures, opened_at=self._opened_at,
                retry_at=None if self._opened_at is None else self._opened_at + self._interval,
                reset_seconds=self._interval, times_opened=self._times_opened,
            )

    # -- deciding ----------------------------------------------------------------------------------------------

    def allow(self) -> bool:
        """May a delivery go now? In half-open, True for exactly one caller (the probe) until its outcome is
        recorded, or until it is presumed lost after ``reset_seconds``."""
        with self._lock:
            now = self._clock()
            state = self._state(now)
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.OPEN:
                return False
            if self._probe_started is not None and now < self._probe_started + self.settings.reset_seconds:
                return False
            self._probe_started = now
            return True

    # -- recording ---------------------------------------------------------------------------------------------

    def record_success(self) -> None:
        """The peer took the delivery (or answered it at all): close, forget the failures."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probe_started = None
            self._interval = self.settings.reset_seconds

    def record_failure(self, *, retryable: bool = True) -> None:
        """A delivery failed. A non-retryable failure means the peer is up and refused that object: it counts
        as a success here. A retryable one counts towards opening; a failed probe re-opens with the reset
        interval doubled (up to ``max_reset_seconds``)."""
        if not retryable:
            self.record_success()
            return
        with self._lock:
            now = self._clock()
            state = self._state(now)
            self._failures += 1
            if state is BreakerState.HALF_OPEN:
                self._interval = min(self._interval * 2, self.settings.max_reset_seconds)
                self._open(now)
            elif state is BreakerState.CLOSED and self._failures >= self.settings.failure_threshold:
                self._open(now)
            # OPEN: a delivery that started before the breaker opened failed late; the timer stays as it is.

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_started = None
        self._times_opened += 1


__all__ = ["BreakerSettings", "BreakerSnapshot", "BreakerState", "CircuitBreaker"]
