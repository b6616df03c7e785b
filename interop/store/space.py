"""Disk-space backpressure: refuse new data before the volume that receives it fills up.

A full disk is the one failure that corrupts more than it refuses: SQLite can't commit, a file is cut short,
and every sender retries into the same wall. So below a free-space watermark (``storage.min_free_bytes`` and
``storage.min_free_percent``; either one) the node refuses new data *before* writing it, with the error each
wire knows for "try again later" (:class:`interop.errors.InsufficientStorage`):

* C-STORE: status A700 "Refused: Out of Resources" (PS3.4 B.2.3); the received data set is discarded;
* STOW-RS: HTTP 503 with ``Retry-After`` and an OperationOutcome, before the body is stored;
* HL7 v2 over MLLP: ``AE`` with ERR-3 207 "Application internal error" saying why (v2.5.1 Ch. 2 §2.9.2);
* the node's own write-back to its store: retried later by the outbox.

The volume watched is the one received files land on (:meth:`BlobStore.temp_dir`): the blob store itself for
the file backend, the local spool for S3. ``statvfs`` is read at most once per ``cache_seconds``, so the check
costs a clock read per instance. The state is on ``/readyz`` (``storage_space``) and in ``/metrics``
(``interop_storage_free_bytes``, ``interop_storage_min_free_bytes``, ``interop_storage_below_watermark``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from interop.errors import InsufficientStorage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Space:
    """Bytes free (to an unprivileged writer) and the volume's size."""

    free: int
    total: int


def measure(path: Path) -> Space:
    st = os.statvfs(path)
    return Space(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


def watermark(total: int, min_free_bytes: int, min_free_percent: float) -> int:
    """The free bytes the volume must keep: the larger of the absolute and the relative floor."""
    return max(min_free_bytes, int(total * min_free_percent / 100))


def shortage(space: Space, min_free_bytes: int, min_free_percent: float) -> str | None:
    """Why ``space`` is below the watermark, or None when it is not."""
    floor = watermark(space.total, min_free_bytes, min_free_percent)
    if space.free >= floor:
        return None
    return (f"storage is nearly full: {_size(space.free)} free of {_size(space.total)}, below the watermark of "
            f"{_size(floor)} (storage.min_free_bytes / storage.min_free_percent); try again later")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class SpaceGuard:
    """The watermark check on one directory's volume, with ``statvfs`` cached for ``cache_seconds``."""

    def __init__(self, path: Path, *, min_free_bytes: int, min_free_percent: float, cache_seconds: float = 1.0,
                 measure: Callable[[Path], Space] = measure, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.min_free_bytes = min_free_bytes
        self.min_free_percent = min_free_percent
        self.cache_seconds = cache_seconds
        self._measure = measure
        self._clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._space = Space(0, 0)
        self._low = False

    def space(self) -> Space:
        """The volume's space, read again when the cached reading is older than ``cache_seconds``."""
        now = self._clock()
        at = self._at
        if at is not None and now - at < self.cache_seconds:
            return self._space
        with self._lock:
            if self._at is None or now - self._at >= self.cache_seconds:
                self._space = self._measure(self.path)
                self._at = now
            return self._space

    def shortage(self) -> str | None:
        """Why new data is refused now, or None (a change either way is logged once)."""
        try:
            reason = shortage(self.space(), self.min_free_bytes, self.min_free_percent)
        except OSError as exc:  # the volume can't be read: the store's own ping and writes will say why
            log.debug("statvfs %s failed: %s", self.path, exc)
            return None
        low = reason is not None
        if low != self._low:
            self._low = low
            if low:
                log.error("refusing new data: %s", reason)
            else:
                log.warning("storage space back above the watermark: accepting new data again")
        return reason

    def check(self) -> None:
        """Raise :class:`InsufficientStorage` when below the watermark."""
        reason = self.shortage()
        if reason is not None:
            raise InsufficientStorage(reason)

    @property
    def floor(self) -> int:
        return watermark(self.space().total, self.min_free_bytes, self.min_free_percent)


class SpaceCollector(Collector):
    """``/metrics`` gauges of a guard (registered once per process; re-pointed when a node is made again)."""

    guard: SpaceGuard | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        guard = self.guard
        if guard is None:
            return
        try:
            space = guard.space()
            floor = guard.floor
        except OSError:
            return
        yield GaugeMetricFamily("interop_storage_free_bytes", "Free bytes on the volume that receives instances",
                                value=space.free)
        yield GaugeMetricFamily("interop_storage_min_free_bytes", "The free-space watermark: below it new data is "
                                "refused (C-STORE A700, STOW-RS 503, HL7 AE)", value=floor)
        yield GaugeMetricFamily("interop_storage_below_watermark", "1 while new data is refused for lack of space",
                                value=1 if space.free < floor else 0)


_collector: SpaceCollector | None = None


def watch(guard: SpaceGuard) -> None:
    """Publish ``guard``'s state in ``/metrics``."""
    global _collector
    if _collector is None:
        from interop.metrics import REGISTRY

        _collector = SpaceCollector()
        REGISTRY.register(_collector)
    _collector.guard = guard
