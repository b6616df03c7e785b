"""The write-back outbox: delivers what reports owe (rows of ``writebacks``, made in the same transaction as
the report's building or its sign-off) and records each delivery's outcome.

Destinations are data (``writeback.destinations``): ``local`` is always there (this node's own store, through
the same ingest path as a C-STORE, and its own FHIR facade); a site adds DICOM peers (C-STORE), DICOMweb
(STOW-RS), FHIR servers (transaction Bundles; bearer or SMART backend services) and webhooks.

- **Exactly-once effect.** A DICOM object's SOP Instance UID is fixed when its row is made (derived from the
  job's key), so a re-delivery stores the same object again; a FHIR Bundle is conditional on business
  identifiers, so a re-delivery creates nothing new. A webhook (a notification of a critical finding) is sent
  at most once: its row is ``sending`` before the POST, and one found ``sending`` after a crash is not resent.
- **Order.** A report's rows go to a destination in the order they were made (the preliminary report before
  its sign-off, the AI's SR before the verified one): a row waits while an earlier row of its report for the
  same destination is not yet sent.
- **Retries and the circuit breaker.** A failure the peer may get over (refused connection, timeout, 5xx,
  out of resources) is retried with exponential backoff, and trips the destination's breaker after
  ``failure_threshold`` in a row: while open, its rows wait without spending attempts, then one probe goes.
  A refusal of the content itself (4xx, a C-STORE error status) is not retried.
- **Dead letters.** A row that was refused, or still failing after ``max_attempts`` or after
  ``give_up_after_seconds``, ends ``dead`` with its reason: ``GET /api/writebacks?state=dead``, the
  ``interop_writebacks{state="dead"}`` gauge, and ``POST /api/writebacks/{id}/retry`` once the cause is mended.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from interop import logs, metrics
from interop.background import Loop
from interop.errors import Conflict, NotFound
from interop.jobs.models import Job, JobResult, WriteBack
from interop.jobs.queue import aware, utcnow
from interop.reports.models import SignOff
from interop.store.blobs import BlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.store.models import Instance
from interop.writeback.breaker import CircuitBreaker
from interop.writeback.destinations import DeliveryError, destination_from_config
from operators.app_result import AppResult

if TYPE_CHECKING:
    from interop.fhir.store import FhirStore

log = logging.getLogger(__name__)

LOCAL = "local"


@dataclass(frozen=True)
class Policy:
    """Retry policy of one destination."""

    max_attempts: int = 10
    give_up_after_seconds: float = 24 * 3600.0
    backoff_seconds: float = 5.0
    max_backoff_seconds: float = 600.0


def pn(name: str) -> str:
    """A display name as a DICOM PN: ``Family^Given`` (already-PN names pass through)."""
    if "^" in name:
        return name[:64]
    parts = name.split()
    if len(parts) < 2:
        return name[:64]
    return f"{parts[-1]}^{' '.join(parts[:-1])}"[:64]


class Outbox:
    def __init__(self, db: Database, store: InstanceStore, blobs: BlobStore, fhir: FhirStore | None = None,
                 destinations: list[Any] | None = None, *, local_policy: Policy | None = None,
                 organization: str = "interop") -> None:
        self.db = db
        self.store = store
        self.blobs = blobs
        self.fhir = fhir
        self.organization = organization
        self.clients: dict[str, Any] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.policies: dict[str, Policy] = {LOCAL: local_policy or Policy()}
        for cfg in destinations or []:
            if not cfg.enabled:
                continue
            self.clients[cfg.name] = destination_from_config(cfg)
            self.breakers[cfg.name] = CircuitBreaker(cfg.breaker)
            self.policies[cfg.name] = Policy(cfg.max_attempts, cfg.give_up_after_seconds,
                                             getattr(cfg, "backoff_seconds", 5.0),
                                             getattr(cfg, "max_backoff_seconds", 600.0))
        self._loop = Loop("writeback", self.drain, 1.0)
        self.before_drain: Any = None  # e.g. the reporter's build step
        metrics.watch("writebacks", self.counts)
        metrics.watch("breakers", self.breaker_states)

    # -- building ---------------------------------------------------------------------------------------------

    def evidence(self, sops: list[str]) -> list[Dataset]:
        """The source images' headers, from the store."""
        with self.db.reading() as s:
            keys = list(s.scalars(select(Instance.blob_key).where(Instance.sop_uid.in_(sops))))
        if len(keys) != len(set(sops)):
            raise ValueError("some source images of the result are no longer stored")
        return [self.store.read_header_dataset(k) for k in keys]

    def full_image(self, sop: str) -> Dataset:
        with self.db.reading() as s:
            key = s.scalars(select(Instance.blob_key).where(Instance.sop_uid == sop)).first()
        if key is None:
            raise ValueError(f"the source image {sop} is no longer stored")
        with self.blobs.open(key) as f:
            return dcmread(f)

    def signoff_of(self, row: WriteBack, inputs: dict[str, Any]) -> Any:
        from interop.writeback.sr import SrSignoff

        with self.db.reading() as s:
            so = s.get(SignOff, row.signoff_id)
            assert so is not None
            earlier = s.scalars(select(SignOff.sr_sop_uid).where(
                SignOff.report_id == so.report_id, SignOff.sequence < so.sequence, SignOff.sr_sop_uid.is_not(None))
                .order_by(SignOff.sequence.desc())).first()
            first = s.scalars(select(WriteBack).where(WriteBack.report_id == so.report_id, WriteBack.kind == "sr",
                                                      WriteBack.signoff_id.is_(None))).first()
            assert first is not None
            prev_uid = earlier or first.sop_instance_uid
            prev_series = first.series_instance_uid if earlier is None else row.series_instance_uid
            so_data = (so.reader_name, so.created_at, json.loads(so.findings), so.conclusion)
            job = s.get(Job, row.job_id)
            study_uid = job.study_uid if job is not None else None
        if not study_uid:  # a job on request names its images, not always its study: ask the evidence
            study_uid = str(self.evidence(list(inputs["sop_instance_uids"])[:1])[0].StudyInstanceUID)
        pred = Dataset()
        pred.StudyInstanceUID = study_uid
        pred.SeriesInstanceUID = prev_series
        pred.SOPInstanceUID = prev_uid
        pred.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        return SrSignoff(verifier_name=pn(so_data[0]), organization=self.organization,
                         verified_at=aware(so_data[1]), predecessor=pred,  # type: ignore[arg-type]
                         overrides=so_data[2], comment=so_data[3])

    def build(self, row: WriteBack, result: AppResult, arrays: dict[str, str], inputs: dict[str, Any]) -> Dataset:
        from interop.writeback.heatmap import heatmap_capture
        from interop.writeback.seg import segmentation
        from interop.writeback.sr import measurement_report

        assert row.sop_instance_uid and row.series_instance_uid
        if row.kind == "sr":
            signoff = self.signoff_of(row, inputs) if row.signoff_id else None
            return measurement_report(result, self.evidence(list(inputs["sop_instance_uids"])),
                                      series_instance_uid=row.series_instance_uid,
                                      sop_instance_uid=row.sop_instance_uid, signoff=signoff,
                                      instance_number=1 + (1 if signoff else 0))
        if row.kind == "heatmap":
            finding = result.findings[row.item]
            assert finding.heatmap
            with self.blobs.open(arrays[finding.heatmap]) as f:
                heat = np.load(f, allow_pickle=False)
            source = self.full_image(finding.sop_instance_uid or inputs["sop_instance_uids"][0])
            return heatmap_capture(result, finding, heat, source, series_instance_uid=row.series_instance_uid,
                                   sop_instance_uid=row.sop_instance_uid, instance_number=row.item + 1)
        seg = result.segmentations[row.item]
        with self.blobs.open(arrays[seg.file]) as f:
            labels = np.load(f, allow_pickle=False)
        return segmentation(result, seg, labels, self.evidence(seg.referenced_sop_instance_uids),
                            series_instance_uid=row.series_instance_uid, sop_instance_uid=row.sop_instance_uid)

    def deliver_local(self, ds: Dataset) -> None:
        with tempfile.NamedTemporaryFile(dir=self.blobs.temp_dir(), suffix=".dcm", delete=False) as f:
            path = Path(f.name)
        ds.save_as(path, enforce_file_format=True)
        self.store.ingest(path, source="writeback")

    # -- the loop ---------------------------------------------------------------------------------------------

    def _blocked(self, row: WriteBack) -> bool:
        """An earlier row of the same report for the same destination is not sent yet."""
        if row.report_id is None:
            return False
        with self.db.reading() as s:
            return bool(s.scalar(select(func.count()).select_from(WriteBack).where(
                WriteBack.report_id == row.report_id, WriteBack.destination == row.destination,
                WriteBack.id < row.id, WriteBack.state != "sent", WriteBack.kind.in_(self._ordered_kinds(row)))))

    @staticmethod
    def _ordered_kinds(row: WriteBack) -> tuple[str, ...]:
        # A sign-off Bundle waits for the preliminary Bundle; a verified SR for the SR it supersedes.
        return ("fhir",) if row.kind == "fhir" else ("sr",) if row.kind == "sr" else ()

    def run_due(self, limit: int = 20) -> int:
        """Deliver the due rows; returns how many were tried."""
        now = utcnow()
        with self.db.reading() as s:
            rows = list(s.scalars(select(WriteBack).where(
                (WriteBack.state == "pending")
                | ((WriteBack.state == "retrying") & (WriteBack.next_attempt_at <= now))).order_by(WriteBack.id)
                .limit(200)))
            for r in rows:
                s.expunge(r)
        tried = 0
        for row in rows:
            if tried >= limit:
                break
            breaker = self.breakers.get(row.destination)
            if row.destination != LOCAL and row.destination not in self.clients:
                self._finish(row, DeliveryError(row.destination, "no destination of that name is configured "
                                                "(or it is disabled)", retryable=True), breaker=None)
                tried += 1
                continue
            if self._blocked(row):
                continue
            if self._expired(row):
                self._give_up(row)
                continue
            if breaker is not None and not breaker.allow():
                continue
            self._deliver(row, breaker)
            tried += 1
        return tried

    def _expired(self, row: WriteBack) -> bool:
        pol = self.policies.get(row.destination, Policy())
        created = aware(row.created_at)
        return created is not None and (utcnow() - created).total_seconds() > pol.give_up_after_seconds

    def _give_up(self, row: WriteBack) -> None:
        pol = self.policies.get(row.destination, Policy())
        with self.db.writing() as s:
            r = s.get(WriteBack, row.id)
            if r is not None and r.state in ("pending", "retrying"):
                r.state = "dead"
                r.error = (f"gave up after {pol.give_up_after_seconds:.0f} s waiting for {row.destination}"
                           + (f"; last error: {r.error}" if r.error else ""))
        metrics.WRITEBACKS.labels(row.destination, row.kind, "dead").inc()

    def _payload(self, row: WriteBack) -> tuple[AppResult, dict[str, str], dict[str, Any]]:
        with self.db.reading() as s:
            res = s.scalars(select(JobResult).where(JobResult.job_id == row.job_id)).one()
            job = s.get(Job, row.job_id)
            assert job is not None
            return (AppResult.model_validate(json.loads(res.content)), json.loads(res.arrays),
                    json.loads(job.inputs))

    def _send(self, row: WriteBack) -> None:
        if row.kind == "fhir":
            assert row.payload is not None
            bundle = json.loads(row.payload)
            if row.destination == LOCAL:
                if self.fhir is None:
                    raise DeliveryError(LOCAL, "this node's FHIR store is not wired to the outbox", retryable=True)
                self.fhir.transaction(bundle)
            else:
                self.clients[row.destination].transaction(bundle)
            return
        if row.kind == "webhook":
            assert row.payload is not None
            with self.db.writing() as s:  # at most once: never POSTed twice, even across a crash
                r = s.get(WriteBack, row.id)
                if r is None or r.state not in ("pending", "retrying"):
                    return
                r.state = "sending"
            self.clients[row.destination].post(json.loads(row.payload), idempotency_key=row.object_key)
            return
        result, arrays, inputs = self._payload(row)
        ds = self.build(row, result, arrays, inputs)
        if row.destination == LOCAL:
            self.deliver_local(ds)
        else:
            self.clients[row.destination].send([ds])

    def _deliver(self, row: WriteBack, breaker: CircuitBreaker | None) -> None:
        with logs.correlated(self.correlation_id(row.job_id)):
            error: Exception | None = None
            try:
                self._send(row)
            except Exception as exc:  # any failure is this delivery's outcome, kept on the row
                error = exc
                log.warning("write-back %s (%s of job %s to %s) failed: %s", row.id, row.kind, row.job_id,
                            row.destination, exc)
            self._finish(row, error, breaker)

    def correlation_id(self, job_id: int) -> str | None:
        """The correlation id the job carries (interop.logs): every delivery of its results logs under it."""
        with self.db.reading() as s:
            return logs.of_inputs(s.scalar(select(Job.inputs).where(Job.id == job_id)))

    def _finish(self, row: WriteBack, error: Exception | None, breaker: CircuitBreaker | None) -> None:
        retryable = not isinstance(error, DeliveryError) or error.retryable
        if breaker is not None:
            if error is None:
                breaker.record_success()
            elif isinstance(error, DeliveryError):
                breaker.record_failure(retryable=error.retryable)
        pol = self.policies.get(row.destination, Policy())
        outcome = "sent"
        with self.db.writing() as s:
            r = s.get(WriteBack, row.id)
            if r is None:
                return
            r.attempts += 1
            if error is None:
                r.state, r.sent_at, r.error = "sent", utcnow(), None
                log.info("write-back %s: %s of job %s delivered to %s", r.id, r.kind, r.job_id, r.destination)
            else:
                reason = str(error) if isinstance(error, DeliveryError) else f"{type(error).__name__}: {error}"
                r.error = f"attempt {r.attempts}: {reason}"
                if not retryable or r.attempts >= pol.max_attempts:
                    r.state = outcome = "dead"
                else:
                    r.state = outcome = "retrying"
                    delay = min(pol.max_backoff_seconds, pol.backoff_seconds * 2 ** (r.attempts - 1))
                    if isinstance(error, DeliveryError) and error.retry_after:
                        delay = max(delay, min(error.retry_after, pol.max_backoff_seconds))
                    r.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
        metrics.WRITEBACKS.labels(row.destination, row.kind, outcome).inc()

    def recover(self) -> int:
        """At start-up: a webhook left ``sending`` by a crash may or may not have reached its peer; it is
        not sent again (at most once) but marked dead with that reason."""
        with self.db.writing() as s:
            rows = list(s.scalars(select(WriteBack).where(WriteBack.state == "sending")))
            for r in rows:
                r.state = "dead"
                r.error = "the node stopped while this notification was being sent; not resent (at most once)"
        return len(rows)

    # -- reading and mending ------------------------------------------------------------------------------------

    @staticmethod
    def as_dict(r: WriteBack) -> dict[str, Any]:
        return {"id": r.id, "job_id": r.job_id, "report_id": r.report_id, "signoff_id": r.signoff_id,
                "destination": r.destination, "kind": r.kind, "object_key": r.object_key,
                "sop_instance_uid": r.sop_instance_uid, "series_instance_uid": r.series_instance_uid,
                "state": r.state, "attempts": r.attempts, "error": r.error,
                "next_attempt_at": aware(r.next_attempt_at), "created_at": aware(r.created_at),
                "sent_at": aware(r.sent_at)}

    def rows(self, *, job_id: int | None = None, report_id: int | None = None, state: str | None = None,
             destination: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(WriteBack).order_by(WriteBack.id).limit(limit)
        if job_id is not None:
            q = q.where(WriteBack.job_id == job_id)
        if report_id is not None:
            q = q.where(WriteBack.report_id == report_id)
        if state:
            q = q.where(WriteBack.state.in_(state.split(",")))
        if destination:
            q = q.where(WriteBack.destination == destination)
        with self.db.reading() as s:
            return [self.as_dict(r) for r in s.scalars(q)]

    def retry(self, row_id: int) -> dict[str, Any]:
        """Give a dead row another round (its attempts start again; its age counts from now)."""
        with self.db.writing() as s:
            r = s.get(WriteBack, row_id)
            if r is None:
                raise NotFound(f"no write-back {row_id}")
            if r.state != "dead":
                raise Conflict(f"write-back {row_id} is {r.state}; only a dead one can be retried")
            r.state, r.attempts, r.next_attempt_at, r.created_at = "pending", 0, None, utcnow()
            out = self.as_dict(r)
        self.wake()
        return out

    def counts(self) -> list[tuple[tuple[str, ...], int]]:
        with self.db.reading() as s:
            return [((d, st), n) for d, st, n in s.execute(
                select(WriteBack.destination, WriteBack.state, func.count()).group_by(WriteBack.destination,
                                                                                      WriteBack.state))]

    def breaker_states(self) -> list[tuple[tuple[str, ...], int]]:
        return [((name, b.state), 1) for name, b in self.breakers.items()]

    def destinations(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"name": LOCAL, "kind": "local", "breaker": None}]
        for name, client in self.clients.items():
            b = self.breakers[name]
            out.append({"name": name, "kind": client.kind, "breaker": b.state})
        return out

    def drain(self) -> None:
        """Build what is due, then deliver until nothing is due (rows that fail wait for their backoff)."""
        if self.before_drain is not None:
            self.before_drain()
        worked = False
        while self.run_due():
            worked = True
        if worked:  # SR/SEG/heat-map objects were built: hand their freed buffers back (interop.memory)
            from interop import memory

            memory.release()

    def wake(self) -> None:
        self._loop.wake()

    def start(self) -> None:
        recovered = self.recover()
        if recovered:
            log.warning("%d notification(s) were being sent when the node stopped; marked dead, not resent",
                        recovered)
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()


__all__ = ["LOCAL", "Outbox", "Policy", "pn"]
