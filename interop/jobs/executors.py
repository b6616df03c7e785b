"""Executors: where jobs run. One interface, two implementations.

- :class:`LocalExecutor` (default): worker threads in the server, each running one app at a time in a child
  process (one slot per GPU when ``jobs.gpus`` is set, pinned with ``CUDA_VISIBLE_DEVICES``; else a CPU pool
  of ``jobs.local_workers``). Each slot takes the most urgent due job itself, so ``stat`` runs before
  ``routine``.
- :class:`CeleryExecutor`: the server hands due jobs to Celery (Redis or RabbitMQ broker, most urgent first);
  ``interop worker`` processes on any machine that shares the database and the blob store run them. If a
  worker dies mid-job its lease expires, the server re-queues the job and hands it out again; the fencing
  token keeps the dead run from ever completing it.

Both are driven by :class:`JobService`, which owns the lease reaper.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Protocol

from interop.background import Loop
from interop.config import JobSettings
from interop.fhir.store import FhirStore
from interop.jobs.queue import JobQueue
from interop.jobs.registry import AppRegistry
from interop.jobs.worker import Worker, clean_scratch
from interop.store.blobs import BlobStore
from interop.store.db import Database

log = logging.getLogger(__name__)


def worker_prefix(kind: str) -> str:
    """``<kind>@<host>:<pid>``: the owner prefix of this process's leases (kind ``local`` or ``celery``)."""
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


class Executor(Protocol):
    def start(self, warm: bool = True) -> None: ...

    def stop(self) -> None: ...

    def notify(self) -> None:
        """New or newly due jobs exist."""

    def ping(self, timeout: float) -> str:
        """The job broker's readiness: ``ok``, ``local`` (no broker: the local executor) or why not."""


def broker_ping(url: str, timeout: float) -> str:
    """Connect to a Celery broker (Redis or AMQP) and close again: ``ok`` or the reason, within about
    ``timeout`` seconds (the connection runs in a daemon thread that is not waited for beyond it)."""
    from concurrent.futures import Future

    from kombu import Connection

    done: Future[str] = Future()

    def connect() -> None:
        try:
            with Connection(url, connect_timeout=timeout, transport_options={
                    "socket_timeout": timeout, "socket_connect_timeout": timeout}) as conn:
                conn.ensure_connection(max_retries=0, timeout=timeout)
            done.set_result("ok")
        except Exception as exc:
            done.set_result(f"error: {type(exc).__name__}: {exc}")

    threading.Thread(target=connect, name="broker-ping", daemon=True).start()
    try:
        return done.result(timeout=timeout + 0.5)
    except TimeoutError:
        return f"error: no answer from the broker within {timeout:g} s"


class LocalExecutor:
    def __init__(self, settings: JobSettings, make_worker: type[Worker] | None = None, *, db: Database,
                 blobs: BlobStore, fhir: FhirStore, registry: AppRegistry, queue: JobQueue, work_dir: Path) -> None:
        self.settings = settings
        self.queue = queue
        self._wake = threading.Condition()
        self._pending = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        gpus = settings.gpus
        slots = len(gpus) if gpus else settings.local_workers
        self.workers: list[Worker] = []
        for i in range(slots):
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i]
            self.workers.append(Worker(db=db, blobs=blobs, fhir=fhir, registry=registry, queue=queue,
                                       work_dir=work_dir, name=f"{worker_prefix('local')}:{i}",
                                       prewarm=settings.prewarm, env=env))

    def notify(self) -> None:
        with self._wake:
            self._pending = True
            self._wake.notify_all()

    def _loop(self, worker: Worker, warm: bool) -> None:
        if warm:
            worker.warm_up()
        while not self._stop.is_set():
            try:
                ran = worker.run_next()
            except Exception:
                log.exception("%s: job run failed unexpectedly", worker.name)
                ran = False
            if ran:
                continue
            try:
                due = self.queue.next_due_in()
            except Exception:
                log.exception("job queue unreadable")
                due = None
            wait = 1.0 if due is None else min(1.0, max(0.01, due))
            with self._wake:
                if not self._pending:
                    self._wake.wait(wait)
                self._pending = False
        worker.close()

    def start(self, warm: bool = True) -> None:
        """Start the slots; with ``warm`` each starts its spare app process now (else after its first job)."""
        self._stop.clear()
        for w in self.workers:
            slot = w.name.rsplit(":", 1)[-1]
            t = threading.Thread(target=self._loop, args=(w, warm), name=f"job-slot-{slot}", daemon=True)
            t.start()
            self._threads.append(t)

    def ping(self, timeout: float) -> str:
        return "local"

    def stop(self) -> None:
        """Stop the slots: each running app is stopped and its job handed back to the queue (no waiting for
        the lease to expire); the slots' threads end."""
        self._stop.set()
        for w in self.workers:
            w.hand_back()
        self.notify()
        for t in self._threads:
            t.join(timeout=15)
        self._threads = []


class CeleryExecutor:
    """Hands due jobs to Celery; the workers are ``interop worker`` processes (interop.jobs.celery_app)."""

    def __init__(self, settings: JobSettings, queue: JobQueue) -> None:
        from interop.jobs.celery_app import make_celery

        self.settings = settings
        self.queue = queue
        self.celery = make_celery(settings)
        self._loop = Loop("celery-dispatch", self.dispatch, 0.5)
        #: A job handed out but not claimed for this long is handed out again (its message may be lost).
        self.resend_after = dt.timedelta(seconds=max(5.0, settings.lease_seconds))

    def notify(self) -> None:
        self._loop.wake()

    def dispatch(self) -> int:
        n = 0
        for job_id, priority in self.queue.to_dispatch(self.resend_after):
            self.celery.send_task("interop.run_job", args=[job_id], queue="interop",
                                  priority={"stat": 0, "shadow": 9}.get(priority, 5))
            n += 1
        return n

    def start(self, warm: bool = True) -> None:
        self._loop.start(at_once=True)

    def ping(self, timeout: float) -> str:
        """``ok`` when the broker takes a connection within ``timeout`` seconds, else why not (readiness)."""
        return broker_ping(str(self.settings.broker_url), timeout)

    def stop(self) -> None:
        self._loop.stop()


class JobService:
    """The node's job side: the executor and the lease reaper (jobs whose worker vanished)."""

    def __init__(self, queue: JobQueue, executor: Executor, settings: JobSettings) -> None:
        self.queue = queue
        self.executor = executor
        self.settings = settings
        self._reaper = Loop("job-reaper", self._reap, max(0.5, min(5.0, settings.lease_seconds / 4)))

    def _reap(self) -> None:
        if self.queue.reap():
            self.executor.notify()

    def start(self, *, local: bool, warm: bool = True) -> None:
        if local:
            # Anything this node's local slots held when it last stopped was lost with it.
            lost = self.queue.reap(owner_prefix=worker_prefix("local").rsplit(":", 1)[0] + ":")
            if lost:
                log.warning("re-queued %d job(s) that were running when the node stopped: %s", len(lost), lost)
        if isinstance(self.executor, LocalExecutor) and self.executor.workers:
            removed = clean_scratch(self.executor.workers[0].work_dir, self.queue)
            if removed:
                log.info("removed %d scratch folder(s) of runs that ended with the last process", removed)
        self.executor.start(warm)
        self._reaper.start()

    def notify(self, _: list[int] | None = None) -> None:
        self.executor.notify()

    def stop(self) -> None:
        self._reaper.stop()
        self.executor.stop()
