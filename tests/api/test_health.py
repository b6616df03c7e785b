"""Health endpoints and HTTP authentication on the running server."""

from __future__ import annotations

import httpx

from tests.conftest import ServerProc


def test_healthz_and_readyz_answer_without_token(server: ServerProc) -> None:
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok", "dicom": "ok"}


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
