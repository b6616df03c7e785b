"""A node's job machinery without the servers: database, blob store, FHIR store, probe app, queue, worker."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from interop.config import JobSettings
from interop.fhir.store import FhirStore
from interop.jobs.queue import JobQueue, NewJob
from interop.jobs.registry import AppRegistry
from interop.jobs.worker import Worker
from interop.routing.router import Router
from interop.routing.rules import RuleStore
from interop.store.blobs import FileBlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore

PROBE_APPS = Path(__file__).parent / "probe_apps"


def probe_bundle(root: Path, behaviour: str = "ok", version: str = "1.0", marker_dir: Path | None = None,
                 probability: float = 1.0) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"name": "probe-model", "version": version, "demonstration": True,
                            "behaviour": behaviour, "probability": probability}
    if marker_dir:
        meta["marker_dir"] = str(marker_dir)
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    return root


@dataclass
class Jobs:
    db: Database
    blobs: FileBlobStore
    fhir: FhirStore
    store: InstanceStore
    registry: AppRegistry
    queue: JobQueue
    router: Router
    tmp: Path

    def worker(self, name: str = "test@host:1:0", **kw: Any) -> Worker:
        return Worker(db=self.db, blobs=self.blobs, fhir=self.fhir, registry=self.registry, queue=self.queue,
                      work_dir=self.tmp / "work", name=name, prewarm=kw.pop("prewarm", False), **kw)

    def ingest(self, name: str = "CT_small.dcm") -> str:
        """Store a pydicom test file; returns its SOP Instance UID."""
        import shutil

        src = Path(str(get_testdata_file(name)))
        tmp = self.blobs.temp_dir() / f"in-{name}"
        shutil.copyfile(src, tmp)
        self.store.ingest(tmp, source="stow")
        import pydicom

        return str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)

    def new_job(self, key: str = "k1", priority: str = "routine", sops: list[str] | None = None,
                max_attempts: int = 3, backoff: float = 0.0, timeout: float = 60.0, app: str = "probe") -> NewJob:
        return NewJob(idempotency_key=key, app=app, app_version="0.0.1", model_version="1.0", rule="t",
                      trigger="request", priority=priority,
                      inputs={"series_uids": [], "sop_instance_uids": sops or []}, study_uid=None, patient_id=None,
                      max_attempts=max_attempts, backoff_seconds=backoff, timeout_seconds=timeout,
                      triggered_at=dt.datetime.now(dt.UTC))


def make_jobs(tmp: Path, db_url: str, behaviour: str = "ok", lease: float = 30.0) -> Jobs:
    db = Database(db_url)
    db.migrate()
    blobs = FileBlobStore(tmp / "blobs")
    fhir = FhirStore(db)
    registry = AppRegistry([PROBE_APPS], {"probe": probe_bundle(tmp / "bundle", behaviour)})
    queue = JobQueue(db, lease_seconds=lease)
    settings = JobSettings(max_attempts=3, backoff_seconds=0)
    router = Router(db, fhir, RuleStore(db), registry, queue, settings)
    return Jobs(db, blobs, fhir, InstanceStore(db, blobs), registry, queue, router, tmp)


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    j = make_jobs(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    yield j
    j.db.dispose()
