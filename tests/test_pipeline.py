"""End to end through a running ``interop serve``: data in by its real wire (storescu, mllp_send), routing,
the job, the MONAI Deploy app run through the SDK in a child process, the stored result through the API."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProc
from tests.peers import orthanc_factory_fixture

__all__ = ["orthanc_factory_fixture"]  # a fixture, registered by import

LAB_RULE = {"name": "liver-labs", "app": "lab_severity", "priority": "routine",
            "labs": {"codes": ["1975-2", "1751-7", "6768-6", "1920-8", "777-3", "5902-2"], "within_hours": 168}}


def wait_job(http: httpx.Client, timeout: float = 120, **filters: str) -> dict[str, Any]:
    """The first job matching ``filters`` once it has ended (succeeded, failed, dead or cancelled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = http.get("/api/jobs", params=filters).json()
        if jobs and jobs[0]["state"] in ("succeeded", "failed", "dead", "cancelled"):
            return http.get(f"/api/jobs/{jobs[0]['id']}").json()  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise AssertionError(f"no finished job for {filters} within {timeout} s: {http.get('/api/jobs').json()}")


def liver_panel(control_id: str, mrn: str, when: dt.datetime) -> str:
    """An ORU^R01 with the lab set of a real PBC trial patient (survival::pbc id 1; copper and the findings
    left out: the model imputes them)."""
    ts = when.strftime("%Y%m%d%H%M%S+0000")
    obx = [("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "14.5", "mg/dL"),
           ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "2.6", "g/dL"),
           ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "1718", "U/L"),
           ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "137.95", "U/L"),
           ("777-3", "Platelets [#/volume] in Blood by Automated count", "190", "10*3/uL"),
           ("5902-2", "Prothrombin time (PT)", "12.2", "s")]
    segs = [f"MSH|^~\\&|LAB_LIS|GENLAB|INTEROP|GENHOSP|{ts}||ORU^R01^ORU_R01|{control_id}|P|2.5.1|||AL|NE",
            f"PID|1||{mrn}^^^GENHOSP^MR||Doe^Jane||19211020|F",
            f"OBR|1|PLC-{control_id}|FIL-{control_id}|24325-3^Hepatic function panel^LN|||{ts}|||||||{ts}"]
    segs += [f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}^^UCUM|||||F|||{ts}"
             for i, (code, name, value, unit) in enumerate(obx, 1)]
    return "\r".join(segs) + "\r"


def wait_writebacks(http: httpx.Client, job_id: int, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The job's write-backs once ``n`` of them have ended (sent or dead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = http.get("/api/writebacks", params={"job_id": job_id}).json()
        if len(rows) >= n and all(r["state"] in ("sent", "dead") for r in rows):
            return rows  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise AssertionError(f"write-backs of job {job_id} not done: {http.get('/api/writebacks').json()}")


def stored_series(srv: ServerProc, http: httpx.Client, study_uid: str, modality: str) -> list[Path]:
    """Files of the study's stored instances of ``modality`` (found by QIDO, read from the blob store)."""
    from interop.store.db import Database
    from interop.store.models import Instance, Series

    series = http.get(f"/dicomweb/studies/{study_uid}/series", params={"Modality": modality}).json()
    uids = [s["0020000E"]["Value"][0] for s in series]
    db = Database(f"sqlite:///{srv.data_dir / 'interop.db'}")
    try:
        from sqlalchemy import select

        with db.reading() as s:
            keys = list(s.scalars(select(Instance.blob_key).join(Series, Series.id == Instance.series_pk)
                                  .where(Series.series_uid.in_(uids))))
    finally:
        db.dispose()
    return [srv.data_dir / "blobs" / "objects" / k[:2] / k for k in keys]


def dciodvfy_errors(path: Path) -> list[str]:
    from tests.support import require_tool

    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def mllp_send(port: int, message: str, tmp: Path) -> str:
    path = tmp / "msg.hl7"
    path.write_bytes(message.encode())
    exe = Path(sys.executable).with_name("mllp_send")
    out = subprocess.run([str(exe), "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"],
                         capture_output=True, timeout=60, check=True)
    return out.stdout.decode()


def test_lab_set_by_hl7_runs_lab_severity_once(server_factory: Any, tmp_path: Path) -> None:
    srv: ServerProc = server_factory({"INTEROP_ROUTING__RULES": json.dumps([LAB_RULE])})
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ack = mllp_send(srv.mllp_port, liver_panel("PBC-1", "MRN-PBC-1", now), tmp_path)
    assert "MSA|CA|PBC-1" in ack
    with srv.client() as http:
        job = wait_job(http, app="lab_severity")
        assert job["state"] == "succeeded", job
        assert job["trigger"] == "labs" and job["rule"] == "liver-labs"
        assert job["patient_id"] == "MRN-PBC-1"
        result = job["result"]
        assert result["model"]["name"] == "lab_severity_pbc_stage"
        assert result["model"]["version"] == job["model_version"]
        assert result["notice"] == "demonstration model, not for clinical use"
        [cls] = result["classifications"]
        assert cls["name"] == "pbc_histologic_stage"
        assert abs(sum(cls["probabilities"].values()) - 1) < 1e-6
        assert len(result["inputs"]["observations"]) == 6
        # The same message again (a resend) and the same lab set asked for by hand: still one job.
        assert "MSA|CA|PBC-1" in mllp_send(srv.mllp_port, liver_panel("PBC-1", "MRN-PBC-1", now), tmp_path)
        patient = job["inputs"]["patient"]
        again = http.post("/api/jobs", json={"app": "lab_severity", "patient": patient})
        assert again.status_code == 200 and again.json()["id"] == job["id"]
        time.sleep(2)
        assert len(http.get("/api/jobs").json()) == 1
        # Its report: FHIR only (a lab model makes no DICOM), a lab DiagnosticReport derived from the six results.
        [wb] = wait_writebacks(http, job["id"], 1)
        assert (wb["kind"], wb["destination"], wb["state"]) == ("fhir", "local", "sent"), wb
        [report] = http.get("/api/reports", params={"patient_id": "MRN-PBC-1"}).json()
        assert report["status"] == "preliminary" and report["app"] == "lab_severity"
        got = http.get(f"/api/reports/{report['id']}").json()
        assert "demonstration model" in got["text"] and "stage" in got["text"].lower()
        preliminary = http.get("/fhir/DiagnosticReport", params={"status": "preliminary"}).json()  # the lab's are final
        [dr] = [e["resource"] for e in preliminary["entry"]]
        assert "imagingStudy" not in dr and len(dr["result"]) == 1
        obs_id = dr["result"][0]["reference"].split("/")[1]
        obs = http.get(f"/fhir/Observation/{obs_id}").json()
        assert len(obs["derivedFrom"]) == 6 and obs["valueCodeableConcept"]


CXR_RULE = {"name": "chest", "app": "cxr_triage", "study": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]}}


def chest_order(control_id: str) -> str:
    """ORM^O01 from the RIS: a chest X-ray ordered for RG1_UNCI's patient, placer and filler number = the study's
    Accession Number ("exam Number")."""
    ts = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    return "\r".join([
        f"MSH|^~\\&|RIS|GENHOSP|INTEROP|GENHOSP|{ts}||ORM^O01^ORM_O01|{control_id}|P|2.5.1|||AL|NE",
        "PID|1||9RG1^^^GENHOSP^MR||Anonymized^Patient||19700101|F",
        "ORC|NW|exam Number^RIS|exam Number^PACS||SC",
        f"OBR|1|exam Number^RIS|exam Number^PACS|36643-5^XR Chest 2 Views^LN|||{ts}",
    ]) + "\r"


def test_chest_cr_by_storescu_runs_cxr_triage(server_factory: Any, tmp_path: Path) -> None:
    """RG1_UNCI.dcm (a real chest CR) sent by storescu: ready study → rule → cxr_triage through the SDK →
    result with the model's name and version, five findings, a heat-map per positive finding; the report is
    basedOn the order the RIS sent by HL7 (ORM^O01 with the study's accession number)."""
    import numpy as np
    from pydicom.data import get_testdata_file

    from tests.support import require_tool

    storescu = require_tool("storescu")
    srv: ServerProc = server_factory({"INTEROP_ROUTING__RULES": json.dumps([CXR_RULE])})
    assert "MSA|CA|ORD-1" in mllp_send(srv.mllp_port, chest_order("ORD-1"), tmp_path)
    cxr = str(get_testdata_file("RG1_UNCI.dcm"))
    subprocess.run([storescu, "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port), cxr], check=True,
                   capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
    with srv.client() as http:
        job = wait_job(http, app="cxr_triage", timeout=180)
        assert job["state"] == "succeeded", job
        result = job["result"]
        metadata = json.loads((Path(__file__).parents[1] / "apps/cxr_triage/model/configs/metadata.json").read_text())
        assert (result["model"]["name"], result["model"]["version"]) == (metadata["name"], metadata["version"])
        assert job["model_version"] == metadata["version"]
        assert result["notice"] == "demonstration model, not for clinical use"
        findings = {f["name"]: f for f in result["findings"]}
        assert set(findings) == {"cardiomegaly", "edema", "effusion", "pneumothorax", "consolidation"}
        for f in findings.values():
            assert f["present"] == (f["probability"] >= f["threshold"])
            if f["present"]:
                r = http.get(f"/api/jobs/{job['id']}/arrays/{f['heatmap']}")
                assert r.status_code == 200
                heat = np.load(io.BytesIO(r.content))
                assert heat.shape == (1955, 1841)  # rows x columns of the radiograph
        assert len({round(f["probability"], 4) for f in findings.values()}) > 1  # not one constant
        # The result comes back into the study as a TID 1500 SR and a heat-map image per present finding
        # (write-back to this node's own store), and its report into the node's FHIR facade.
        present = [f for f in findings.values() if f["present"]]
        rows = wait_writebacks(http, job["id"], 2 + len(present), timeout=120)
        assert sorted((r["kind"], r["state"]) for r in rows) == sorted(
            [("sr", "sent"), ("fhir", "sent")] + [("heatmap", "sent")] * len(present)), rows
        study_uid = result["inputs"]["study_instance_uid"]
        [sr_file] = stored_series(srv, http, study_uid, "SR")
        assert dciodvfy_errors(sr_file) == []
        heatmaps = stored_series(srv, http, study_uid, "OT")
        assert len(heatmaps) == len(present) and all(dciodvfy_errors(f) == [] for f in heatmaps)
        [report] = http.get("/api/reports", params={"study_uid": study_uid}).json()
        assert report["status"] == "preliminary" and report["job_id"] == job["id"]
        dr = http.get("/fhir/DiagnosticReport", params={"status": "preliminary"}).json()
        assert dr["total"] == 1 and len(dr["entry"][0]["resource"]["result"]) == len(findings)
        [order] = http.get("/fhir/ServiceRequest", params={"intent": "order"}).json()["entry"]
        assert dr["entry"][0]["resource"]["basedOn"] == [{"reference": f"ServiceRequest/{order['resource']['id']}",
                                                          "type": "ServiceRequest"}]
        # The same study again: the job is not run again and no second SR is made.
        subprocess.run([storescu, "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port), cxr], check=True,
                       capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
        time.sleep(3)
        assert len(http.get("/api/jobs").json()) == 1
        assert len(stored_series(srv, http, study_uid, "SR")) == 1


MR_RULE = {"name": "brain", "app": "mr_segmentation", "study": {"modalities": ["MR"], "body_parts": ["HEAD", "BRAIN"]}}


def test_brain_mr_series_by_storescu_runs_mr_segmentation(server_factory: Any, orthanc_factory: Any,
                                                          tmp_path: Path) -> None:
    """The Colin27 MRI as a DICOM MR series (2 mm) sent by storescu: mr_segmentation's label map lies on the
    series' own slices and its volumes are plausible brain volumes; its SEG and SR go to the node's own store
    and to the PACS (Orthanc), valid by dciodvfy in both."""
    import numpy as np

    from apps.mr_segmentation.make_demo_series import main as make_series
    from tests.support import require_tool

    if not Path("/usr/share/mricron/templates/ch2.nii.gz").exists():
        import pytest

        pytest.skip("mricron-data is not installed (tests/run.sh: apt-get install mricron-data)")
    storescu = require_tool("storescu")
    series = tmp_path / "mr"
    make_series(["--out", str(series), "--step", "2"])
    files = sorted(str(p) for p in series.rglob("*.dcm"))
    pacs = orthanc_factory("pacs")
    pacs_dest = {"name": "pacs", "kind": "dicom", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
    srv: ServerProc = server_factory({"INTEROP_ROUTING__RULES": json.dumps([MR_RULE]),
                                      "INTEROP_WRITEBACK__DESTINATIONS": json.dumps([pacs_dest])})
    subprocess.run([storescu, "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port), *files], check=True,
                   capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
    with srv.client() as http:
        job = wait_job(http, app="mr_segmentation", timeout=240)
        assert job["state"] == "succeeded", job
        result = job["result"]
        assert result["notice"] == "demonstration model, not for clinical use"
        assert result["model"]["version"] == job["model_version"]
        [seg] = result["segmentations"]
        assert len(seg["referenced_sop_instance_uids"]) == len(files)
        labels = np.load(io.BytesIO(http.get(f"/api/jobs/{job['id']}/arrays/{seg['file']}").content))
        assert labels.shape[0] == len(files) and labels.dtype == np.uint8
        assert set(np.unique(labels)) - {0} == {s["number"] for s in seg["segments"]}
        volumes = {m["name"]: m["value"] for m in result["measurements"]}
        assert all(m["unit"] == "mL" for m in result["measurements"])
        assert 2 < volumes["Left hippocampus volume"] < 15 and 60 < volumes["Cerebellum volume"] < 250
        rows = wait_writebacks(http, job["id"], 5, timeout=120)
        assert sorted((r["destination"], r["kind"], r["state"]) for r in rows) == [
            ("local", "fhir", "sent"), ("local", "seg", "sent"), ("local", "sr", "sent"), ("pacs", "seg", "sent"),
            ("pacs", "sr", "sent")], rows
        for r in rows:
            if r["destination"] == "pacs":
                found = pacs.find_instance(r["sop_instance_uid"])
                assert found is not None
                got = tmp_path / f"pacs-{r['kind']}.dcm"
                got.write_bytes(pacs.client().get(f"/instances/{found['ID']}/file").content)
                assert dciodvfy_errors(got) == []
        study_uid = result["inputs"]["study_instance_uid"]
        [seg_file] = stored_series(srv, http, study_uid, "SEG")
        [sr_file] = stored_series(srv, http, study_uid, "SR")
        assert dciodvfy_errors(seg_file) == [] and dciodvfy_errors(sr_file) == []
