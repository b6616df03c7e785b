"""CORS (http.cors_origins): a browser app from a listed origin may call the node with a bearer token; other
origins get no CORS headers, and without the setting the node sends none at all."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from interop.api.app import create_app
from interop.config import Settings
from interop.node import Node
from tests.conftest import ServerProc


def _client(tmp_path: Path, origins: list[str]) -> TestClient:
    settings = Settings(data_dir=tmp_path, http={"cors_origins": origins})
    return TestClient(create_app(Node(settings), manage_node=False))


def test_listed_origin_gets_preflight_and_response_headers(server_factory: type, tmp_path: Path) -> None:
    srv: ServerProc = server_factory({"INTEROP_HTTP__CORS_ORIGINS": '["http://ehr.example"]'})  # type: ignore[call-arg]
    pre = httpx.options(f"{srv.base_url}/fhir/Patient", headers={
        "Origin": "http://ehr.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ehr.example"
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    with srv.client() as http:
        got = http.get("/fhir/Patient", headers={"Origin": "http://ehr.example"})
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == "http://ehr.example"
    assert "location" in got.headers["access-control-expose-headers"].lower()
    other = httpx.options(f"{srv.base_url}/fhir/Patient", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in other.headers
    # the CapabilityStatement says so
    assert httpx.get(f"{srv.base_url}/fhir/metadata").json()["rest"][0]["security"]["cors"] is True


def test_no_setting_no_cors(tmp_path: Path) -> None:
    c = _client(tmp_path, [])
    r = c.get("/healthz", headers={"Origin": "http://ehr.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert c.get("/fhir/metadata").json()["rest"][0]["security"]["cors"] is False
