"""The node: every role wired together on one set of settings (``interop serve`` runs one)."""

from __future__ import annotations

import logging
import tempfile
import threading
import time

from interop import metrics
from interop.assembly import StudyAssembler
from interop.audit import AuditTrail
from interop.auth import TokenService
from interop.background import Loop
from interop.config import Settings
from interop.dicom.listener import DimseListener
from interop.fhir import FhirStore
from interop.hl7v2 import MessageLog, MllpListener
from interop.hl7v2.messages import mapping_options
from interop.jobs.executors import CeleryExecutor, Executor, JobService, LocalExecutor
from interop.jobs.queue import JobQueue
from interop.jobs.registry import AppRegistry
from interop.mlops.drift import DriftMonitor
from interop.mlops.registry import ModelRegistry
from interop.mlops.shadow import ShadowMonitor
from interop.reports.service import Reporter, SignOffs
from interop.retention import Retention
from interop.routing.router import Router
from interop.routing.rules import RuleStore
from interop.store import space
from interop.store.blobs import open_blob_store
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.writeback.outbox import Outbox, Policy

log = logging.getLogger(__name__)

#: Readiness values that count as ready (``local``: the job broker of the local executor, which has none).
READY = frozenset({"ok", "local"})
#: Seconds a readiness check of the job broker may take.
BROKER_TIMEOUT = 2.0


class Node:
    """Owns the database, blob store, instance store, study assembly, token service and DIMSE listener."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.db_url)
        self.blobs = open_blob_store(settings)  # files, or S3 (its bucket checked here: storage.backend)
        # Below the free-space watermark of the volume received files land on, new data is refused unwritten.
        self.space = space.SpaceGuard(self.blobs.temp_dir(), min_free_bytes=settings.storage.min_free_bytes,
                                      min_free_percent=settings.storage.min_free_percent)
        space.watch(self.space)
        self.assembler = StudyAssembler(self.db, settings.studies.quiet_seconds)
        self.store = InstanceStore(
            self.db,
            self.blobs,
            duplicate_policy=settings.dicom.duplicate_policy,
            on_study_touched=self.assembler.touch,
        )
        self.store.admit = self.space.check
        self.tokens = TokenService.from_settings(settings)
        self.fhir = FhirStore(self.db)
        self.dimse = DimseListener(settings.dicom, self.store, self.assembler, self.store.read_header_dataset)
        # HL7 v2: each message and the FHIR resources it maps to are committed together, before AA.
        # Enhanced-mode messages asking only for an accept ACK are answered CA once kept; the applier loop writes
        # their resources right after (interop.hl7v2.messages).
        self.hl7 = MessageLog(self.db, self.fhir.transaction, mapping_options(settings.hl7),
                              commit_acks=settings.hl7.accept_acknowledgments,
                              apply_max_lag=settings.hl7.apply_max_lag, max_pending=settings.hl7.max_pending)
        self._hl7_apply = Loop("hl7-apply", self.hl7.apply_due, 0.05)
        self.hl7.on_accepted = self._hl7_apply.wake
        metrics.watch("hl7_pending", lambda: [((), self.hl7.pending)])
        self.mllp = MllpListener(settings.hl7, self.hl7)
        self.mllp.admit = self.space.check
        # Routing and jobs: ready studies and completed lab sets become jobs; an executor runs the apps.
        self.apps = AppRegistry(settings.jobs.apps_dirs, settings.jobs.models,
                                installed=[(m.app, m.path) for m in settings.models.installed],
                                models_root=settings.data_dir / "models")
        # Model versions: which is active or shadow per app and rule, shadow comparisons, drift (interop.mlops).
        self.models = ModelRegistry(self.db, self.apps)
        self.rules = RuleStore(self.db)
        self.queue = JobQueue(self.db, lease_seconds=settings.jobs.lease_seconds)
        self.executor: Executor
        if settings.jobs.executor == "celery":
            self.executor = CeleryExecutor(settings.jobs, self.queue)
        else:
            self.executor = LocalExecutor(settings.jobs, db=self.db, blobs=self.blobs, fhir=self.fhir,
                                          registry=self.apps, queue=self.queue, work_dir=settings.data_dir / "work")
        self.jobs = JobService(self.queue, self.executor, settings.jobs)
        self.router = Router(self.db, self.fhir, self.rules, self.apps, self.queue, settings.jobs,
                             on_new_jobs=self.jobs.notify, models=self.models)
        self.shadows = ShadowMonitor(self.db, self.blobs, settings.models)
        self._shadow_loop = Loop("shadow-compare", self.shadows.compare_due, 2.0)
        self.drift = DriftMonitor(self.db, self.apps, settings.models)
        metrics.watch("model_input_drift", lambda: self.drift.gauge("input"))
        metrics.watch("model_output_drift", lambda: self.drift.gauge("output"))
        metrics.watch("shadow_agreement", self.shadow_agreement)
        metrics.watch("shadow_comparisons", self.shadow_counts)
        self.assembler.subscribe(lambda _event: self.router.wake())
        self.hl7.on_stored = self.router.wake
        metrics.watch_queue(self.queue.depth)
        # What succeeded jobs owe: a report (recommendations, text, FHIR bundle, sign-off Task) and the
        # objects for each destination (interop.reports, interop.writeback.outbox).
        self.reporter = Reporter(self.db, self.fhir, self.apps, settings,
                                 {d.name: d.kind for d in settings.writeback.destinations if d.enabled})
        self.outbox = Outbox(self.db, self.store, self.blobs, self.fhir, settings.writeback.destinations,
                             local_policy=Policy(max_attempts=settings.writeback.local_max_attempts),
                             organization=settings.reports.organization)
        self.outbox.before_drain = self.reporter.build_due
        self.signoffs = SignOffs(self.db, self.reporter)
        # Every HTTP access to patient data becomes an AuditEvent (interop.audit; the API middleware feeds it).
        self.audit = AuditTrail(self.fhir, flush_seconds=settings.audit.flush_seconds)
        self.signoffs.on_signed = self.outbox.wake
        metrics.watch("reports", self.report_counts)
        # Received images deleted N days after their results were delivered (interop.retention).
        self.retention = Retention(self.db, self.blobs, settings.retention, store=self.store)
        self._retention_loop = Loop("retention", self.retention.run, settings.retention.interval_seconds)
        self.started = False
        #: Set once a shutdown began (SIGTERM/SIGINT): readiness says so, the listeners accept nothing new.
        self.stopping = threading.Event()
        self._stop_deadline: float | None = None

    def start(self) -> None:
        self.db.migrate()
        removed = self.blobs.clean_temp()
        if removed:
            log.info("removed %d partial file(s) left by an earlier run", removed)
        # Received DICOM streams land next to the objects, so storing them is a rename, not a copy.
        tempfile.tempdir = str(self.blobs.temp_dir())
        self.apps.check_rule_apps([r.app for r in self.settings.routing.rules])
        self.rules.sync_config(self.settings.routing.rules)
        self.dimse.start()
        pending = self.hl7.load_pending()
        if pending:
            log.info("%d accepted HL7 message(s) still have their resources to write: applying them", pending)
        self.hl7.stopping.clear()
        self._hl7_apply.start(at_once=True)
        self.mllp.start()
        self.assembler.start()
        # A spare app process (torch and MONAI imported) only pays off when some rule can queue work.
        warm = any(r.enabled for r in self.rules.rules())
        self.jobs.start(local=self.settings.jobs.executor == "local", warm=warm)
        self.router.start()
        self._shadow_loop.start()
        self.outbox.start()
        if self.settings.audit.enabled:
            self.audit.start()
        if warm:  # the recommender's model (~0.3 GB) is loaded ahead only where results can come
            self.reporter.warm()
        if self.settings.retention.enabled:
            self._retention_loop.start(at_once=True)
        self.stopping.clear()
        self._stop_deadline = None
        self.started = True

    def begin_shutdown(self, grace: float | None = None) -> None:
        """Stop accepting new DICOM associations and MLLP connections now (a signal handler may call this: it
        does not block); what is in flight may finish until ``grace`` seconds (``shutdown.grace_seconds``)
        from now, when :meth:`stop` ends it."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        grace = self.settings.shutdown.grace_seconds if grace is None else grace
        self._stop_deadline = time.monotonic() + grace
        log.info("shutting down: accepting no new associations, connections or requests; %.0f s for what is "
                 "in flight", grace)
        self.mllp.stop_accepting()
        threading.Thread(target=self.dimse.stop_accepting, name="dimse-stop-accepting", daemon=True).start()

    def stop(self) -> None:
        """Stop every role: the listeners first (in-flight associations and messages finish within the grace
        period of :meth:`begin_shutdown`, or at once when it was not called), then the background loops; running
        jobs are handed back to the queue; the audit trail is flushed; the database closed."""
        deadline = self._stop_deadline if self._stop_deadline is not None else time.monotonic()
        self.stopping.set()
        self.mllp.stop(grace=max(0.0, deadline - time.monotonic()))
        self.hl7.stopping.set()
        self._hl7_apply.stop()  # what it had not applied stays pending, for the next start
        self.dimse.stop(grace=max(0.0, deadline - time.monotonic()))
        self._retention_loop.stop()
        self.assembler.stop()
        self.router.stop()
        self._shadow_loop.stop()
        self.jobs.stop()
        self.outbox.stop()
        self.audit.stop()
        self.db.dispose()
        self.started = False
        self._stop_deadline = None

    def report_counts(self) -> list[tuple[tuple[str, ...], int]]:
        from sqlalchemy import func, select

        from interop.reports.models import Report

        with self.db.reading() as s:
            return [((app, state), n) for app, state, n in s.execute(
                select(Report.app, Report.state, func.count()).group_by(Report.app, Report.state))]

    def shadow_agreement(self) -> list[tuple[tuple[str, ...], float]]:
        return [((a["app"], a["active_version"], a["shadow_version"]), a["agreement_rate"])
                for a in self.models.agreement() if a["agreement_rate"] is not None]

    def shadow_counts(self) -> list[tuple[tuple[str, ...], int]]:
        out: list[tuple[tuple[str, ...], int]] = []
        for a in self.models.agreement():
            key = (a["app"], a["active_version"], a["shadow_version"])
            out += [((*key, "agree"), a["agreed"]), ((*key, "disagree"), a["compared"] - a["agreed"]),
                    ((*key, "incomplete"), a["incomplete"])]
        return out

    def check_ready(self) -> dict[str, str]:
        """Readiness of each dependency: ``ok`` or the reason it isn't."""
        out: dict[str, str] = {}
        try:
            self.db.ping()
            out["database"] = "ok"
        except Exception as exc:
            out["database"] = f"error: {exc}"
        try:
            self.blobs.ping()
            out["storage"] = "ok"
        except Exception as exc:
            out["storage"] = f"error: {exc}"
        out["storage_space"] = self.space.shortage() or "ok"
        out["broker"] = self.executor.ping(BROKER_TIMEOUT)
        out["dicom"] = "ok" if self.started and self.dimse.listening else "not listening"
        out["hl7"] = "ok" if self.started and self.mllp.listening else "not listening"
        if self.stopping.is_set():
            out["node"] = "shutting down"
        return out
