"""The closed loop with real peers: Orthanc (Debian package) as the PACS, a second ``interop serve`` as the EHR's
FHIR server (reached through SMART Backend Services: a token endpoint that checks our private_key_jwt), and a
webhook receiver.

A study sent to Orthanc is auto-routed to the node (orthanc/autoroute.lua), cxr_triage runs, and the results
come back where clinicians look: the TID 1500 SR and the heat-maps into the same study in Orthanc (dciodvfy
clean, dsrdump shows TID 1500; Orthanc does not route them back to us), the preliminary report, its
Observations, recommendations, Task and (for a critical finding) Communication in the EHR, all passing the
official R4 schema, one webhook notification. Sign-off then yields the verified SR in Orthanc and the final
report in the EHR. Faults: the PACS and the EHR down for a while get everything once they are back, exactly
once; a destination that never comes back ends in the dead-letter list with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import RSAKey
from pydicom.data import get_testdata_file

from tests.conftest import ServerProc, free_port
from tests.fhir.conftest import validators
from tests.peers import HttpRecorder, OrthancPeer, TestTokenServer, http_recorder_fixture, orthanc_factory_fixture
from tests.support import require_tool
from tests.test_pipeline import CXR_RULE, dciodvfy_errors, wait_job

__all__ = ["http_recorder_fixture", "orthanc_factory_fixture", "validators"]  # fixtures, registered by import

CXR = str(get_testdata_file("RG1_UNCI.dcm"))
FINDINGS = ("cardiomegaly", "edema", "effusion", "pneumothorax", "consolidation")
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def storescu(port: int, aet: str, *files: str) -> None:
    subprocess.run([require_tool("storescu"), "-aet", "MODALITY", "-aec", aet, "127.0.0.1", str(port), *files],
                   check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})


def wait_writebacks(http: httpx.Client, timeout: float = 120, **filters: Any) -> list[dict[str, Any]]:
    """The write-backs matching ``filters`` once none of them is pending, retrying or sending."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = http.get("/api/writebacks", params={**filters, "limit": 1000}).json()
        if rows and all(r["state"] in ("sent", "dead") for r in rows):
            return rows
        time.sleep(0.3)
    raise AssertionError(f"write-backs {filters} not done in {timeout} s: {rows}")


def schema_errors(validators: dict[str, Any], res: dict[str, Any]) -> list[str]:
    return [f"{res['resourceType']}: {e.message[:200]}" for e in validators[res["resourceType"]].iter_errors(res)]


def ehr_resources(ehr: httpx.Client, type_: str, **params: str) -> list[dict[str, Any]]:
    bundle = ehr.get(f"/fhir/{type_}", params={**params, "_count": "100"}).json()
    return [e["resource"] for e in bundle.get("entry") or []]


def person_token(node: ServerProc, scope: str, subject: str = "dr.jane", name: str = "Jane Doe",
                 role: str = "radiologist", patient: str | None = None) -> str:
    """A token for a person (subject, display name, role), signed with the node's key."""
    from interop.auth.tokens import TokenService

    secret = (node.data_dir / "secret.key").read_bytes().strip()
    return TokenService(secret, issuer="interop", audience="interop", ttl=600).mint(
        subject=subject, scope=scope, client_id="worklist",
        extra={"name": name, "role": role, **({"patient": patient} if patient else {})})


def smart_client(tmp_path: Path, ehr: ServerProc) -> tuple[TestTokenServer, dict[str, Any]]:
    key = RSAKey.generate_key(2048, parameters={"kid": "node-1"})
    pem = tmp_path / "node-client.pem"
    pem.write_bytes(key.as_pem(private=True))
    tokens = TestTokenServer.for_node(ehr, client_id="interop-node", jwks={"keys": [key.as_dict(private=False)]})
    tokens.start()
    auth = {"kind": "smart-backend", "token_url": tokens.url, "client_id": "interop-node",
            "private_key_file": str(pem), "key_id": "node-1", "algorithm": "RS384", "scope": "system/*.cru"}
    return tokens, auth


def test_study_from_orthanc_comes_back_as_sr_heatmaps_and_an_ehr_report_then_signed(
        server_factory: Any, orthanc_factory: Any, http_recorder: HttpRecorder, validators: dict[str, Any],
        tmp_path: Path) -> None:
    ehr: ServerProc = server_factory(name="ehr")
    tokens, auth = smart_client(tmp_path, ehr)
    pacs_http, pacs_dicom = free_port(), free_port()
    destinations = [
        {"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_dicom},
        {"name": "ehr", "kind": "fhir", "base_url": f"{ehr.base_url}/fhir", "auth": auth},
        {"name": "alerts", "kind": "webhook", "url": f"{http_recorder.base_url}/critical"},
    ]
    node: ServerProc = server_factory({
        "INTEROP_ROUTING__RULES": json.dumps([CXR_RULE]),
        "INTEROP_WRITEBACK__DESTINATIONS": json.dumps(destinations),
        # Every present finding is critical here, so the stat path is exercised whatever the model says.
        "INTEROP_REPORTS__CRITICAL": json.dumps(dict.fromkeys(FINDINGS, 0.0)),
        "INTEROP_REPORTS__ORGANIZATION": "Radiology, General Hospital",
    }, name="node")
    try:
        pacs: OrthancPeer = orthanc_factory("pacs", http_port=pacs_http, dicom_port=pacs_dicom, autoroute=True,
                                            node_port=node.dicom_port)
        storescu(pacs.dicom_port, pacs.aet, CXR)  # the modality sends to the PACS; the PACS routes to us
        with node.client() as http, ehr.client() as ehr_http:
            job = wait_job(http, app="cxr_triage", timeout=240)
            assert job["state"] == "succeeded", job
            present = [f for f in job["result"]["findings"] if f["present"]]
            assert present, "the demonstration model calls findings on RG1_UNCI (see apps/cxr_triage)"
            rows = wait_writebacks(http, job_id=job["id"], timeout=180)
            kinds = sorted((r["destination"], r["kind"], r["state"]) for r in rows)
            assert kinds == sorted(
                [("local", "sr", "sent"), ("pacs", "sr", "sent"), ("local", "fhir", "sent"),
                 ("ehr", "fhir", "sent"), ("alerts", "webhook", "sent")]
                + [(d, "heatmap", "sent") for d in ("local", "pacs") for _ in present]), rows
            study_uid = job["result"]["inputs"]["study_instance_uid"]

            # -- the PACS: SR and heat-maps in the same study, valid, TID 1500; nothing routed back to us --
            sr_uid = next(r["sop_instance_uid"] for r in rows if r["destination"] == "pacs" and r["kind"] == "sr")
            sr = pacs.find_instance(sr_uid)
            assert sr is not None
            tags = pacs.rest("GET", f"/instances/{sr['ID']}/simplified-tags")
            assert tags["StudyInstanceUID"] == study_uid and tags["VerificationFlag"] == "UNVERIFIED"
            sr_file = tmp_path / "pacs-sr.dcm"
            sr_file.write_bytes(pacs.client().get(f"/instances/{sr['ID']}/file").content)
            assert dciodvfy_errors(sr_file) == []
            dump = subprocess.run([require_tool("dsrdump"), "+Pt", str(sr_file)], capture_output=True, text=True)
            assert "TID 1500 (DCMR)" in dump.stdout and "Imaging Measurement Report" in dump.stdout
            for r in rows:
                if r["destination"] == "pacs" and r["kind"] == "heatmap":
                    hm = pacs.find_instance(r["sop_instance_uid"])
                    assert hm is not None
                    hm_file = tmp_path / f"hm-{r['id']}.dcm"
                    hm_file.write_bytes(pacs.client().get(f"/instances/{hm['ID']}/file").content)
                    assert dciodvfy_errors(hm_file) == []
                    assert pacs.rest("GET", f"/instances/{hm['ID']}/simplified-tags")["StudyInstanceUID"] == study_uid
            routed = pacs.jobs("DicomModalityStore")
            assert len(routed) == 1, routed  # the CR once; never our SR or heat-maps
            assert len(pacs.instances()) == 2 + len(present)  # CR + SR + heat-maps, each once
            assert node_received_by_dimse(http) == 1

            # -- the EHR: the preliminary report and everything around it, schema-valid --
            assert tokens.granted >= 1  # reached through SMART backend services
            [report] = ehr_resources(ehr_http, "DiagnosticReport")
            assert report["status"] == "preliminary" and len(report["result"]) == 5
            observations = ehr_resources(ehr_http, "Observation", category="imaging")
            assert len(observations) == 5 and all(o["status"] == "preliminary" for o in observations)
            proposals = ehr_resources(ehr_http, "ServiceRequest", status="draft", intent="proposal")
            assert proposals and all("Source:" in json.dumps(p["note"]) for p in proposals)
            [task] = ehr_resources(ehr_http, "Task")
            assert task["status"] == "requested" and task["priority"] == "stat"
            [communication] = ehr_resources(ehr_http, "Communication")
            devices = ehr_resources(ehr_http, "Device")
            provenances = ehr_resources(ehr_http, "Provenance")
            [patient] = ehr_resources(ehr_http, "Patient")
            for res in [report, *observations, *proposals, task, communication, *devices, *provenances, patient]:
                assert schema_errors(validators, res) == []
            # One notification, with its idempotency key.
            [note] = http_recorder.requests
            assert {k.lower(): v for k, v in note.headers.items()}.get("idempotency-key")
            assert note.json()["type"] == "critical-ai-finding"

            # -- sign-off: a person with the right to write reports; someone without it is refused --
            [rep] = http.get("/api/reports", params={"study_uid": study_uid}).json()
            assert rep["status"] == "preliminary" and rep["priority"] == "stat"
            # A token confined to one patient (patient/ scopes, launch context) sees that patient's reports only.
            [me] = [e["resource"] for e in http.get("/fhir/Patient", params={"identifier": rep["patient_id"]})
                    .json()["entry"]]
            other = http.post("/fhir/Patient", json={"resourceType": "Patient",
                                                     "identifier": [{"system": "urn:test", "value": "P-2"}]}).json()
            for pid, sees in ((me["id"], True), (other["id"], False)):
                confined = {"Authorization": "Bearer " + person_token(node, "patient/*.rs", "pat", "Pat",
                                                                      role="viewer", patient=pid)}
                listed = httpx.get(f"{node.base_url}/api/reports", headers=confined).json()
                assert [r["id"] for r in listed] == ([rep["id"]] if sees else [])
                one = httpx.get(f"{node.base_url}/api/reports/{rep['id']}", headers=confined)
                assert one.status_code == (200 if sees else 403)
                assert httpx.get(f"{node.base_url}/api/feedback", headers=confined).status_code == 403
            for scope, role in (("user/DiagnosticReport.rs", "radiologist"),  # no write scope
                                ("user/DiagnosticReport.rus", "technologist"),  # a role that may not sign
                                ("system/*.cruds", None)):  # a backend client, not a person
                token = (person_token(node, scope, "someone", role=role) if role else node.token(scope))
                r = httpx.post(f"{node.base_url}/api/reports/{rep['id']}/signoff", json={"action": "accept"},
                               headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome", (scope, role, r.text)
            signer = {"Authorization": f"Bearer {person_token(node, 'user/DiagnosticReport.rus')}"}
            r = httpx.post(f"{node.base_url}/api/reports/{rep['id']}/signoff", headers=signer,
                           json={"action": "accept", "conclusion": "Agree with the AI findings."})
            assert r.status_code == 200, r.text
            verified_uid = r.json()["verified_sr"]
            wait_writebacks(http, report_id=rep["id"], timeout=120)
            verified = pacs.find_instance(verified_uid)
            assert verified is not None
            vtags = pacs.rest("GET", f"/instances/{verified['ID']}/simplified-tags")
            assert vtags["VerificationFlag"] == "VERIFIED" and vtags["StudyInstanceUID"] == study_uid
            vfile = tmp_path / "pacs-verified-sr.dcm"
            vfile.write_bytes(pacs.client().get(f"/instances/{verified['ID']}/file").content)
            assert dciodvfy_errors(vfile) == []
            vdump = subprocess.run([require_tool("dsrdump"), "+Pt", str(vfile)], capture_output=True, text=True)
            assert "Doe^Jane, Radiology, General Hospital" in vdump.stdout and "Predecessor Docs    : 1" in vdump.stdout
            [report] = ehr_resources(ehr_http, "DiagnosticReport")
            assert report["status"] == "final"
            assert all(p["status"] == "active" for p in ehr_resources(ehr_http, "ServiceRequest"))
            [task] = ehr_resources(ehr_http, "Task")
            assert task["status"] == "completed"
            assert schema_errors(validators, report) == [] and schema_errors(validators, task) == []
            assert len(http_recorder.requests) == 1  # the notification went once
            feedback = http.get("/api/feedback").text.splitlines()
            assert len(feedback) == 1 + 5 and ",accept," in feedback[1]
    finally:
        tokens.stop()


def node_received_by_dimse(http: httpx.Client) -> int:
    """Instances the node stored from DIMSE associations (its own results come by the write-back path)."""
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("interop_dicom_instances_received_total{") and 'source="dimse"' in line \
                and 'outcome="stored"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_pacs_and_ehr_down_for_a_while_get_everything_once_and_a_dead_peer_is_dead_lettered(
        server_factory: Any, orthanc_factory: Any, tmp_path: Path) -> None:
    ehr: ServerProc = server_factory(name="ehr")
    pacs_http, pacs_dicom, nowhere = free_port(), free_port(), free_port()
    quick = {"breaker": {"failure_threshold": 2, "reset_seconds": 1, "max_reset_seconds": 2}}
    destinations = [
        {"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_dicom,
         "timeout_seconds": 5, **quick},
        {"name": "ehr", "kind": "fhir", "base_url": f"{ehr.base_url}/fhir", "timeout_seconds": 5,
         "auth": {"kind": "bearer", "token": ehr.token("system/*.cru")}, **quick},
        {"name": "gone", "kind": "dicomweb", "url": f"http://127.0.0.1:{nowhere}/dicom-web", "max_attempts": 2,
         "timeout_seconds": 2},
    ]
    node: ServerProc = server_factory({"INTEROP_ROUTING__RULES": json.dumps([CXR_RULE]),
                                       "INTEROP_WRITEBACK__DESTINATIONS": json.dumps(destinations)}, name="node")
    ehr.stop()  # the EHR is down; the PACS has not been started
    storescu(node.dicom_port, "INTEROP", CXR)
    with node.client() as http:
        job = wait_job(http, app="cxr_triage", timeout=240)
        assert job["state"] == "succeeded", job
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = http.get("/api/writebacks", params={"job_id": job["id"]}).json()
            waiting = [r for r in rows if r["destination"] in ("pacs", "ehr")]
            if waiting and all(r["state"] == "retrying" or (r["state"] == "pending" and r["attempts"] == 0)
                               for r in waiting) and any(r["attempts"] for r in waiting):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"nothing failed while the PACS and the EHR were down: {rows}")
        failed = next(r for r in rows if r["destination"] == "pacs" and r["error"])
        assert "connect" in failed["error"] and "127.0.0.1" in failed["error"]
        breakers = {d["name"]: d["breaker"] for d in http.get("/api/destinations").json()}
        assert breakers["pacs"] in ("open", "half-open", "closed")
        # The destination that never comes back: dead, with the reason, in the list and the metrics.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            dead = http.get("/api/writebacks", params={"state": "dead", "destination": "gone"}).json()
            if dead and all(r["destination"] == "gone" for r in dead):
                break
            time.sleep(0.5)
        assert dead and all("could not connect" in r["error"] or "connect" in r["error"].lower() for r in dead)
        assert 'interop_writebacks{destination="gone",state="dead"}' in http.get("/metrics").text
        # Both come back: everything arrives, once.
        pacs: OrthancPeer = orthanc_factory("pacs", http_port=pacs_http, dicom_port=pacs_dicom)
        ehr.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            rows = http.get("/api/writebacks", params={"job_id": job["id"]}).json()
            if all(r["state"] == "sent" for r in rows if r["destination"] in ("pacs", "ehr")):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"results did not arrive once the peers were back: {rows}")
        pacs_rows = [r for r in rows if r["destination"] == "pacs"]
        for r in pacs_rows:
            assert pacs.find_instance(r["sop_instance_uid"]) is not None  # raises if stored twice
        assert len(pacs.instances()) == len(pacs_rows)
        # Delivered again, as after a crash between the peer's answer and our record of it: the PACS and the
        # EHR still hold one of each.
        with ehr.client() as ehr_http:
            assert len(ehr_resources(ehr_http, "DiagnosticReport")) == 1
            n_obs = len(ehr_resources(ehr_http, "Observation"))
        redo = [r["id"] for r in rows if r["destination"] in ("pacs", "ehr")]
        mark_pending(node, redo)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            again = [r for r in http.get("/api/writebacks", params={"job_id": job["id"]}).json() if r["id"] in redo]
            if all(r["state"] == "sent" and r["attempts"] > 1 for r in again):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not delivered again: {again}")
        assert len(pacs.instances()) == len(pacs_rows)
        with ehr.client() as ehr_http:
            assert len(ehr_resources(ehr_http, "DiagnosticReport")) == 1
            assert len(ehr_resources(ehr_http, "Observation")) == n_obs
        # A dead letter can be sent again once its cause is mended (an administrator's call).
        dead_row = http.get("/api/writebacks", params={"state": "dead"}).json()[0]
        admin = http.post(f"/api/writebacks/{dead_row['id']}/retry")
        assert admin.status_code == 200 and admin.json()["state"] == "pending"


def mark_pending(node: ServerProc, ids: list[int]) -> None:
    from sqlalchemy import update

    from interop.jobs.models import WriteBack
    from interop.store.db import Database

    db = Database(f"sqlite:///{node.data_dir / 'interop.db'}")
    try:
        with db.writing() as s:
            s.execute(update(WriteBack).where(WriteBack.id.in_(ids)).values(state="pending"))
    finally:
        db.dispose()
