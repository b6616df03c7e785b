"""The Celery side of the job queue: the task ``interop.run_job`` and ``interop worker``.

Messages carry only a job id; the job's state lives in the database, so a message delivered twice, or to a
worker that died, changes nothing by itself: a worker must *claim* the job (interop.jobs.queue) to run it.
``acks_late`` with ``reject_on_worker_lost`` returns a message whose worker process died; jobs whose worker
machine vanished come back through the server's lease reaper. Workers need the same database URL and blob
store as the server (``INTEROP_DATABASE_URL``, ``INTEROP_DATA_DIR`` on a shared volume or an object store).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery

from interop.config import JobSettings, Settings

log = logging.getLogger(__name__)


def make_celery(settings: JobSettings) -> Celery:
    app = Celery("interop", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="interop",
        broker_connection_retry_on_startup=True,
        # Redis: honour message priority (0 = most urgent) within the queue.
        broker_transport_options={"priority_steps": list(range(10)), "queue_order_strategy": "priority",
                                  "visibility_timeout": max(60, int(settings.timeout_seconds * 2))},
        worker_hijack_root_logger=False,
    )
    return app


_state = threading.local()
_lock = threading.Lock()
_slots = iter(range(1 << 30))
#: Every pool thread's worker, to hand their jobs back when the worker process shuts down.
_workers: list[Any] = []


def _worker() -> Any:
    """This pool thread's :class:`~interop.jobs.worker.Worker` (one per thread, each with its spare process)."""
    with _lock:
        if getattr(_state, "worker", None) is None:
            import os

            from interop.fhir.store import FhirStore
            from interop.jobs.executors import worker_prefix
            from interop.jobs.queue import JobQueue
            from interop.jobs.registry import AppRegistry
            from interop.jobs.worker import Worker
            from interop.store.blobs import open_blob_store
            from interop.store.db import Database

            settings = Settings()
            db = Database(settings.db_url)
            queue = JobQueue(db, lease_seconds=settings.jobs.lease_seconds)
            registry = AppRegistry(settings.jobs.apps_dirs, settings.jobs.models,
                                   installed=[(m.app, m.path) for m in settings.models.installed],
                                   models_root=settings.data_dir / "models")
            _state.worker = Worker(
                db=db, blobs=open_blob_store(settings), fhir=FhirStore(db), registry=registry,
                queue=queue, work_dir=settings.data_dir / "work", name=f"{worker_prefix('celery')}:{next(_slots)}",
                prewarm=settings.jobs.prewarm, env=dict(os.environ),
            )
            _state.worker.warm_up()
            _workers.append(_state.worker)
        return _state.worker


def run_job(job_id: int) -> str:
    """Claim and run job ``job_id`` if it is due; a no-op when another worker has it or it is finished."""
    ran = _worker().run_next(job_id=job_id)
    return "ran" if ran else "not due"


def hand_back_all(**_: Any) -> None:
    """Celery's ``worker_shutting_down`` (SIGTERM, SIGINT): stop the running apps and hand their jobs back to
    the queue, so the server dispatches them again at once instead of after the lease expires; the tasks then
    end and Celery's warm shutdown does not wait out an inference."""
    for worker in list(_workers):
        worker.hand_back()


def build_worker_app(settings: Settings) -> Celery:
    from celery.signals import worker_shutting_down

    worker_shutting_down.connect(hand_back_all, weak=False)
    app = make_celery(settings.jobs)
    app.task(name="interop.run_job", acks_late=True, reject_on_worker_lost=True)(run_job)
    return app
