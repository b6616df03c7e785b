"""Health endpoints and HTTP authentication on the running server."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import httpx
from pydicom import dcmread
from pynetdicom import AE

from tests.conftest import ServerProc
from tests.support import sample_file


def test_healthz_and_readyz_answer_without_token(server: ServerProc) -> None:
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok", "storage_space": "ok", "broker": "local",
                                      "dicom": "ok", "hl7": "ok"}


def test_api_without_token_is_401_operation_outcome(server: ServerProc) -> None:
    r = httpx.get(f"{server.base_url}/api/studies/events")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login"


def test_api_with_expired_or_foreign_token_is_401(server: ServerProc) -> None:
    expired = server.token(ttl=-30)
    r = httpx.get(f"{server.base_url}/api/studies/events", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401
    r = httpx.get(f"{server.base_url}/api/studies/events", headers={"Authorization": "Bearer abc.def.ghi"})
    assert r.status_code == 401


def test_api_with_wrong_scope_is_403(server: ServerProc) -> None:
    with server.client(scope="system/Patient.rs") as c:
        r = c.get("/api/studies/events")
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"


def test_unknown_study_is_404_operation_outcome(server: ServerProc) -> None:
    with server.client() as c:
        r = c.get("/api/studies/1.2.3.4.5")
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"


def test_openapi_docs_are_served(server: ServerProc) -> None:
    r = httpx.get(f"{server.base_url}/openapi.json")
    assert r.status_code == 200 and "/api/studies/events" in r.json()["paths"]



def test_study_times_are_utc_with_zone(server: ServerProc, tmp_path: Path) -> None:
    src = tmp_path / "ct.dcm"
    shutil.copyfile(sample_file("CT_small.dcm"), src)
    ae = AE("PYSCU")
    ae.add_requested_context(str(dcmread(src).SOPClassUID))
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="INTEROP")
    assert assoc.is_established
    assert assoc.send_c_store(src).Status == 0
    assoc.release()
    with server.client() as c:
        state = c.get(f"/api/studies/{dcmread(src).StudyInstanceUID}").json()
    stamp = dt.datetime.fromisoformat(state["last_received_at"])
    assert stamp.utcoffset() == dt.timedelta(0), "times carry their zone (UTC)"
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60
