"""``GET /metrics`` of a running node after real traffic: a C-STORE, a routed job, an HL7 message, FHIR reads."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from interop.metrics import fhir_interaction
from tests.api.test_jobs_api import probe_env, store
from tests.hl7v2.support import oru
from tests.jobs.conftest import probe_bundle
from tests.test_pipeline import wait_job


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (labels in any order) in a Prometheus exposition, or 0."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(("method", "route", "interaction"), [
    ("GET", "/fhir/{type_}/{id_}", "read"), ("GET", "/fhir/{type_}", "search-type"),
    ("POST", "/fhir/{type_}", "create"), ("POST", "/fhir", "transaction"), ("GET", "/fhir/metadata", "capabilities"),
    ("GET", "/fhir/{type_}/{id_}/_history/{vid}", "vread"), ("PUT", "/fhir/{type_}/{id_}", "update"),
    ("POST", "/fhir/{type_}/_search", "search-type"), ("DELETE", "/fhir/{type_}/{id_}", "delete"),
])
def test_fhir_interaction_from_route(method: str, route: str, interaction: str) -> None:
    assert fhir_interaction(method, route) == interaction


def test_metrics_count_real_traffic(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(probe_env(probe_bundle(tmp_path / "b")))
    store(srv, "CT_small.dcm")
    with srv.client() as http:
        job = wait_job(http, app="probe")
        assert job["state"] == "succeeded"
        with socket.create_connection(("127.0.0.1", srv.mllp_port), timeout=10) as s:
            s.sendall(b"\x0b" + oru("MET1") + b"\x1c\x0d")
            assert b"MSA|AA" in s.recv(65536)
        assert http.get("/fhir/Patient", params={"_count": "1"}).status_code == 200
        assert http.get("/fhir/Patient/does-not-exist").status_code == 404
        time.sleep(0.2)
    import httpx

    r = httpx.get(f"{srv.base_url}/metrics")  # no token: Prometheus scrapes it
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert value(text, "interop_dicom_instances_received_total", source="dimse", outcome="stored") == 1
    assert value(text, "interop_dicom_bytes_received_total", source="dimse") > 0
    assert value(text, "interop_studies_ready_total") >= 1
    assert value(text, "interop_job_attempts_total", app="probe", model_version="1.0", outcome="succeeded") == 1
    assert value(text, "interop_job_trigger_to_start_seconds_count", app="probe") == 1
    assert value(text, "interop_jobs", app="probe", state="succeeded") == 1
    assert value(text, "interop_hl7_messages_total", ack="AA") == 1
    assert value(text, "interop_fhir_request_seconds_count", interaction="search-type", status="2xx") == 1
    assert value(text, "interop_fhir_request_seconds_count", interaction="read", status="4xx") == 1
