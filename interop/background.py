"""One background loop for the node's periodic work (study assembly, routing, the lease reaper, the Celery
dispatcher, the write-back outbox): call ``step`` every ``interval`` seconds, or at once when woken; an
exception in a step is logged and the loop goes on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Loop:
    def __init__(self, name: str, step: Callable[[], object], interval: float) -> None:
        self.name = name
        self.step = step
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.step()
            except Exception:
                log.exception("%s: pass failed; will retry", self.name)

    def wake(self) -> None:
        self._wake.set()

    def start(self, *, at_once: bool = False) -> None:
        """Start the thread; with ``at_once`` the first step runs now rather than after one interval."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if at_once:
            self._wake.set()

    def stop(self, timeout: float = 15) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
