"""The write-back outbox: delivers what succeeded jobs owe (rows of ``writebacks``, made in the same
transaction as the job's success) and records each delivery's outcome.

Destination ``local``: the node's own store, through the same ingest path as a C-STORE (so the study holds
its AI results, QIDO/WADO and C-FIND serve them, and ImagingStudy lists them). A failed delivery is retried
with backoff and, after ``MAX_ATTEMPTS``, left ``dead`` with its reason (``GET /api/writebacks``). The PACS,
DICOMweb and FHIR destinations, circuit breakers and the dead-letter API belong to the write-back issue.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import select

from interop.background import Loop
from interop.jobs.models import JobResult, WriteBack
from interop.jobs.queue import aware, utcnow
from interop.store.blobs import BlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.store.models import Instance
from operators.app_result import AppResult

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_SECONDS = 5.0


class Outbox:
    def __init__(self, db: Database, store: InstanceStore, blobs: BlobStore) -> None:
        self.db = db
        self.store = store
        self.blobs = blobs
        self._loop = Loop("writeback", self.drain, 1.0)

    # -- building ---------------------------------------------------------------------------------------------

    def evidence(self, sops: list[str]) -> list[Dataset]:
        """The source images' headers, from the store."""
        with self.db.reading() as s:
            keys = list(s.scalars(select(Instance.blob_key).where(Instance.sop_uid.in_(sops))))
        if len(keys) != len(set(sops)):
            raise ValueError("some source images of the result are no longer stored")
        return [self.store.read_header_dataset(k) for k in keys]

    def build(self, row: WriteBack, result: AppResult, arrays: dict[str, str], inputs: dict[str, Any]) -> Dataset:
        from interop.writeback.seg import segmentation
        from interop.writeback.sr import measurement_report

        if row.kind == "sr":
            return measurement_report(result, self.evidence(list(inputs["sop_instance_uids"])),
                                      series_instance_uid=row.series_instance_uid,
                                      sop_instance_uid=row.sop_instance_uid)
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

    def run_due(self, limit: int = 20) -> int:
        """Deliver the due rows; returns how many were tried."""
        now = utcnow()
        with self.db.reading() as s:
            rows = list(s.scalars(select(WriteBack).where(
                (WriteBack.state == "pending")
                | ((WriteBack.state == "retrying") & (WriteBack.next_attempt_at <= now))).order_by(WriteBack.id)
                .limit(limit)))
            for r in rows:
                s.expunge(r)
        for row in rows:
            self._deliver(row)
        return len(rows)

    def _deliver(self, row: WriteBack) -> None:
        error: str | None = None
        try:
            with self.db.reading() as s:
                res = s.scalars(select(JobResult).where(JobResult.job_id == row.job_id)).one()
                from interop.jobs.models import Job

                inputs = json.loads(s.get(Job, row.job_id).inputs)  # type: ignore[union-attr]
            result = AppResult.model_validate(json.loads(res.content))
            ds = self.build(row, result, json.loads(res.arrays), inputs)
            if row.destination != "local":
                raise ValueError(f"unknown destination {row.destination!r}")
            self.deliver_local(ds)
        except Exception as exc:  # any failure is this delivery's outcome, kept on the row
            error = f"{type(exc).__name__}: {exc}"
            log.warning("write-back %s (%s of job %s to %s) failed: %s", row.id, row.kind, row.job_id,
                        row.destination, error)
        with self.db.writing() as s:
            r = s.get(WriteBack, row.id)
            if r is None:
                return
            r.attempts += 1
            if error is None:
                r.state, r.sent_at, r.error = "sent", utcnow(), None
                log.info("write-back %s: %s of job %s stored (%s)", r.id, r.kind, r.job_id, r.sop_instance_uid)
            else:
                r.error = f"attempt {r.attempts}: {error}"
                if r.attempts >= MAX_ATTEMPTS:
                    r.state = "dead"
                else:
                    r.state = "retrying"
                    r.next_attempt_at = utcnow() + dt.timedelta(seconds=BACKOFF_SECONDS * 2 ** (r.attempts - 1))

    def list(self, *, job_id: int | None = None, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(WriteBack).order_by(WriteBack.id).limit(limit)
        if job_id is not None:
            q = q.where(WriteBack.job_id == job_id)
        if state:
            q = q.where(WriteBack.state == state)
        with self.db.reading() as s:
            return [{"id": r.id, "job_id": r.job_id, "destination": r.destination, "kind": r.kind,
                     "sop_instance_uid": r.sop_instance_uid, "series_instance_uid": r.series_instance_uid,
                     "state": r.state, "attempts": r.attempts, "error": r.error,
                     "next_attempt_at": aware(r.next_attempt_at), "created_at": aware(r.created_at),
                     "sent_at": aware(r.sent_at)} for r in s.scalars(q)]

    def drain(self) -> None:
        """Deliver until nothing is due (rows that fail wait for their backoff)."""
        while self.run_due():
            pass

    def wake(self) -> None:
        self._loop.wake()

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
