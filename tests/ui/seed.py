"""Pending AI results for the worklist's browser tests and ``bench/worklist.py``: rows inserted the way a
succeeded cxr_triage job leaves them (a ``jobs`` row, its ``job_results`` row with the AppResult and its heat-map
arrays in the blob store, and a ``preliminary`` report with recommendations from our guidance and the report
text), on images stored in the node by DICOM. The model's real findings, codes and thresholds come from the
app's bundle metadata; the probabilities are drawn, so some reports are stat (a critical pneumothorax).

Written while the node runs (SQLite in WAL mode takes a second writer), so the server sees them at once.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from interop.jobs.models import PRIORITY_RANK, Job, JobResult
from interop.recommend.kb import load_knowledge_base
from interop.recommend.model import Recommendation
from interop.recommend.report import build_report_text
from interop.reports.models import Report
from interop.store.blobs import FileBlobStore
from interop.store.db import Database
from operators.app_result import AppResult

REPO = Path(__file__).resolve().parents[2]
CXR_METADATA = REPO / "apps" / "cxr_triage" / "model" / "configs" / "metadata.json"
#: The cxr_triage app's critical threshold (apps/cxr_triage/app.yaml).
CRITICAL = {"pneumothorax": 0.5}


@dataclass(frozen=True)
class StoredImage:
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    rows: int
    columns: int


def cxr_copies(n: int, folder: Path, prefix: str = "WL") -> tuple[list[Path], list[StoredImage]]:
    """``n`` copies of the chest CR RG1_UNCI (pydicom-data), each its own patient, study, series and instance."""
    src = dcmread(str(get_testdata_file("RG1_UNCI.dcm")))
    files, images = [], []
    for i in range(n):
        ds = src.copy()
        ds.PatientID = f"{prefix}{i:04d}"
        ds.PatientName = f"Test^Worklist{i:04d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = f"A{i:06d}"
        path = folder / f"cxr-{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        images.append(StoredImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PatientID,
                                  int(ds.Rows), int(ds.Columns)))
    return files, images


def stored_image(path: str | Path) -> StoredImage:
    ds = dcmread(str(path), stop_before_pixels=True)
    return StoredImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, str(ds.PatientID),
                       int(ds.Rows), int(ds.Columns))


def fhir_context(http: httpx.Client, images: list[StoredImage], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """Study UID -> {"patient", "imaging_study"}: the node's FHIR resources of each stored study (written once
    the study is ready), as the reporter reads them into a report's content."""
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    for image in {i.study_uid: i for i in images}.values():
        while True:
            bundle = http.get("/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{image.study_uid}",
                                                            "_include": "ImagingStudy:subject"}).json()
            found = {e["resource"]["resourceType"]: e["resource"] for e in bundle.get("entry") or []}
            if "ImagingStudy" in found and "Patient" in found:
                out[image.study_uid] = {"patient": found["Patient"], "imaging_study": found["ImagingStudy"]}
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no ImagingStudy for {image.study_uid} in {timeout} s: {bundle}")
            time.sleep(0.3)
    return out


def heatmap(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth map (a few Gaussian blobs over the lungs), float32 0..1 on the image's grid, like Grad-CAM's."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    out = np.zeros((rows, columns), dtype=np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(0.3, 0.75) * rows, rng.uniform(0.2, 0.8) * columns
        sy, sx = rng.uniform(0.08, 0.2) * rows, rng.uniform(0.08, 0.2) * columns
        out = np.maximum(out, np.exp(-(((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2) / 2))
    return out / out.max()


def put_arrays(data_dir: Path, rows: int, columns: int, names: list[str], seed: int = 0) -> dict[str, str]:
    """One heat-map per finding into the node's blob store; ``heatmap_<name>.npy`` -> blob key."""
    blobs = FileBlobStore(data_dir / "blobs")
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        with tempfile.NamedTemporaryFile(dir=blobs.temp_dir(), suffix=".npy", delete=False) as f:
            np.save(f, heatmap(rows, columns, rng), allow_pickle=False)
        key = blobs.new_key()
        blobs.put_file(Path(f.name), key)
        out[f"heatmap_{name}.npy"] = key
    return out


def _result(image: StoredImage, meta: dict, rng: random.Random, stat: bool) -> AppResult:
    findings = []
    for f in meta["findings"]:
        p = rng.betavariate(1.2, 3.0)
        if f["name"] == "pneumothorax":
            p = rng.uniform(0.6, 0.97) if stat else rng.uniform(0.0, 0.4) * f["threshold"] * 2
        p = min(0.999, max(0.001, p))
        findings.append({"name": f["name"], "code": f["code"], "probability": round(p, 4), "threshold": f["threshold"],
                         "present": round(p, 4) >= f["threshold"], "heatmap": f"heatmap_{f['name']}.npy",
                         "sop_instance_uid": image.sop_uid})
    present = [f["code"]["display"].lower() for f in findings if f["present"]]
    summary = f"CR PA: {'suggests ' + ', '.join(present) if present else 'no finding above threshold'}" \
              " (demonstration model, not for clinical use)"
    return AppResult.model_validate({
        "schema": "interop.app-result/1", "app": {"name": "cxr_triage", "version": "0.1.0"},
        "model": {"name": meta["name"], "version": meta["version"], "path": str(CXR_METADATA.parents[1]),
                  "sha256": "0" * 64, "demonstration": True, "notice": "demonstration model, not for clinical use"},
        "notice": "demonstration model, not for clinical use",
        "inputs": {"study_instance_uid": image.study_uid, "series_instance_uid": image.series_uid,
                   "sop_instance_uids": [image.sop_uid], "patient_id": image.patient_id, "observations": []},
        "findings": findings, "summary": summary, "timing": {"inference_seconds": round(rng.uniform(0.2, 0.4), 3)}})


def _recommendations(result: AppResult) -> list[Recommendation]:
    kb = load_knowledge_base()
    recs = []
    for f in sorted((f for f in result.findings if f.present), key=lambda f: -f.probability):
        for s in kb.for_target(f.name)[:2]:
            recs.append(Recommendation(kind=s.kind, code=s.code, text=s.document(), snippet_id=s.ref, source=s.source,
                                       finding=f.name, score=0.7))
    return recs


def seed_reports(database_url: str, images: list[StoredImage], arrays: dict[str, str], n: int,
                 context: dict[str, dict[str, Any]], *, stat_every: int = 9, now: dt.datetime | None = None,
                 seed: int = 1, spread: dt.timedelta = dt.timedelta(days=2)) -> list[int]:
    """``n`` preliminary cxr_triage reports on ``images`` (round robin), created over ``spread`` before ``now``
    (the first one oldest), every ``stat_every``-th one stat; their results share ``arrays``; ``context``
    (:func:`fhir_context`) gives each study's Patient and ImagingStudy. Returns the ids."""
    meta = json.loads(CXR_METADATA.read_text())
    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.UTC)
    db = Database(database_url)
    ids: list[int] = []
    try:
        with db.writing() as s:
            for i in range(n):
                image = images[i % len(images)]
                stat = stat_every > 0 and i % stat_every == stat_every - 1
                result = _result(image, meta, rng, stat)
                recs = _recommendations(result)
                critical = [f.name for f in result.findings
                            if f.present and f.name in CRITICAL and f.probability >= CRITICAL[f.name]]
                created = now - spread + spread * (i / max(1, n))
                key = uuid.uuid4().hex
                inputs = {"series_uids": [image.series_uid], "sop_instance_uids": [image.sop_uid]}
                job = Job(idempotency_key=key, app="cxr_triage", app_version="0.1.0", model_version=meta["version"],
                          rule="chest", trigger="study", priority="stat" if critical else "routine",
                          priority_rank=PRIORITY_RANK.get("stat" if critical else "routine", 1),
                          study_uid=image.study_uid, patient_id=image.patient_id, inputs=json.dumps(inputs),
                          state="succeeded", attempts=1, max_attempts=3, backoff_seconds=10, timeout_seconds=120,
                          cancel_requested=False, triggered_at=created, created_at=created, started_at=created,
                          finished_at=created)
                s.add(job)
                s.flush()
                content = result.as_json()
                s.add(JobResult(job_id=job.id, model_name=meta["name"], model_version=meta["version"],
                                demonstration=True, content=json.dumps(content), arrays=json.dumps(arrays),
                                created_at=created))
                report_content = {
                    **context[image.study_uid], "order": None, "observations": [],
                    "recommendations": [{**r.__dict__, "code": r.code.model_dump()} for r in recs],
                    "critical": critical, "text": build_report_text(result, recs), "issued": created.isoformat()}
                report = Report(job_id=job.id, app="cxr_triage", model_name=meta["name"], model_version=meta["version"],
                                demonstration=True, patient_id=image.patient_id, study_uid=image.study_uid,
                                state="preliminary", priority="stat" if critical else "routine",
                                critical=json.dumps(critical), content=json.dumps(report_content), verdicts=0,
                                attempts=0, created_at=created, updated_at=created)
                s.add(report)
                s.flush()
                ids.append(report.id)
    finally:
        db.dispose()
    return ids


def mr_series(slices: int, folder: Path, patient_id: str = "WLMR01") -> tuple[list[Path], list[StoredImage]]:
    """``slices`` instances of one MR series (pydicom's MR_small, 64 x 64), numbered 1..slices."""
    src = dcmread(str(get_testdata_file("MR_small.dcm")))
    study, series = generate_uid(), generate_uid()
    files, images = [], []
    for i in range(slices):
        ds = src.copy()
        ds.PatientID, ds.PatientName = patient_id, "Test^Brain"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        path = folder / f"mr-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        images.append(StoredImage(study, series, ds.SOPInstanceUID, patient_id, int(ds.Rows), int(ds.Columns)))
    return files, images


def seed_segmentation_report(database_url: str, data_dir: Path, images: list[StoredImage],
                             context: dict[str, dict[str, Any]]) -> int:
    """A preliminary mr_segmentation-style report on ``images`` (one series): a label map with two structures
    (left and right hippocampus, SNOMED CT coded), labelled most on the last slice, and their volumes."""
    rows, columns = images[0].rows, images[0].columns
    labels = np.zeros((len(images), rows, columns), dtype=np.uint8)
    for k in range(len(images)):
        r = 4 + 3 * k
        labels[k, 20:20 + r, 14:14 + r] = 1
        labels[k, 20:20 + r, 46 - r:46] = 2
    blobs = FileBlobStore(data_dir / "blobs")
    with tempfile.NamedTemporaryFile(dir=blobs.temp_dir(), suffix=".npy", delete=False) as f:
        np.save(f, labels, allow_pickle=False)
    key = blobs.new_key()
    blobs.put_file(Path(f.name), key)
    snomed = "http://snomed.info/sct"
    left = {"system": snomed, "code": "7771000", "display": "Left"}
    right = {"system": snomed, "code": "24028007", "display": "Right"}
    hippocampus = {"system": snomed, "code": "5976002", "display": "Hippocampus"}
    volume = {"system": snomed, "code": "118565006", "display": "Volume"}
    image = images[0]
    result = AppResult.model_validate({
        "schema": "interop.app-result/1", "app": {"name": "mr_segmentation", "version": "0.1.0"},
        "model": {"name": "mr_structures_demo", "version": "0.1.0", "path": "apps/mr_segmentation/model",
                  "sha256": "1" * 64, "demonstration": True, "notice": "demonstration model, not for clinical use"},
        "notice": "demonstration model, not for clinical use",
        "inputs": {"study_instance_uid": image.study_uid, "series_instance_uid": image.series_uid,
                   "sop_instance_uids": [i.sop_uid for i in images], "patient_id": image.patient_id},
        "measurements": [
            {"name": "Left hippocampus volume", "code": volume, "value": 3.1, "unit": "mL", "finding_site": hippocampus,
             "laterality": left, "segment_number": 1},
            {"name": "Right hippocampus volume", "code": volume, "value": 3.4, "unit": "mL",
             "finding_site": hippocampus, "laterality": right, "segment_number": 2}],
        "segmentations": [{"file": "labels.npy", "series_instance_uid": image.series_uid,
                           "referenced_sop_instance_uids": [i.sop_uid for i in images],
                           "segments": [
                               {"number": 1, "name": "left_hippocampus", "code": hippocampus, "laterality": left},
                               {"number": 2, "name": "right_hippocampus", "code": hippocampus, "laterality": right}]}],
        "summary": "2 structures measured (demonstration model, not for clinical use)"})
    now = dt.datetime.now(dt.UTC)
    db = Database(database_url)
    try:
        with db.writing() as s:
            job = Job(idempotency_key=uuid.uuid4().hex, app="mr_segmentation", app_version="0.1.0",
                      model_version="0.1.0", rule="brain", trigger="study", priority="routine",
                      priority_rank=PRIORITY_RANK.get("routine", 1), study_uid=image.study_uid,
                      patient_id=image.patient_id,
                      inputs=json.dumps({"series_uids": [image.series_uid],
                                         "sop_instance_uids": [i.sop_uid for i in images]}),
                      state="succeeded", attempts=1, max_attempts=3, backoff_seconds=10, timeout_seconds=600,
                      cancel_requested=False, triggered_at=now, created_at=now, started_at=now, finished_at=now)
            s.add(job)
            s.flush()
            s.add(JobResult(job_id=job.id, model_name="mr_structures_demo", model_version="0.1.0", demonstration=True,
                            content=json.dumps(result.as_json()), arrays=json.dumps({"labels.npy": key}),
                            created_at=now))
            content = {**context[image.study_uid], "order": None, "observations": [], "recommendations": [],
                       "critical": [], "text": build_report_text(result, []), "issued": now.isoformat()}
            report = Report(job_id=job.id, app="mr_segmentation", model_name="mr_structures_demo",
                            model_version="0.1.0", demonstration=True, patient_id=image.patient_id,
                            study_uid=image.study_uid,
                            state="preliminary", priority="routine", critical="[]", content=json.dumps(content),
                            verdicts=0, attempts=0, created_at=now, updated_at=now)
            s.add(report)
            s.flush()
            return report.id
    finally:
        db.dispose()
