"""The audit trail (interop.audit): an AuditEvent per HTTP access to patient data, allowed or refused, valid by
the official R4 schema, searchable through FHIR and not editable there."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

import httpx

from interop.audit import audit_event, signoff_event
from interop.auth.tokens import Principal
from tests.conftest import ServerProc
from tests.fhir.conftest import validators

__all__ = ["validators"]  # a fixture, registered by import

AT = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
WHO = Principal(subject="dr.jane", client_id="interop-worklist", scope_text="user/*.rs",
                claims={"name": "Jane Doe", "role": "radiologist"})


def _errors(validators: dict[str, Any], event: dict[str, Any]) -> list[str]:
    return [e.message for e in validators["AuditEvent"].iter_errors(event)]


def test_fhir_read_search_and_refusal_events(validators: dict[str, Any]) -> None:
    read = audit_event(method="GET", path="/fhir/Observation/abc", query="", status=200, principal=WHO,
                       client_addr="10.0.0.7", at=AT)
    assert read is not None and _errors(validators, read) == []
    assert read["action"] == "R" and read["outcome"] == "0" and read["subtype"][0]["code"] == "read"
    assert read["entity"] == [{"what": {"reference": "Observation/abc"}}]
    assert read["agent"][0]["who"] == {"identifier": {"system": "urn:interop:user", "value": "dr.jane"},
                                       "display": "Jane Doe"}
    assert read["agent"][0]["network"] == {"address": "10.0.0.7", "type": "2"}
    assert read["agent"][1]["who"]["identifier"]["value"] == "interop-worklist"
    search = audit_event(method="GET", path="/fhir/Observation", query="patient=p1&code=1975-2", status=200,
                         principal=WHO, client_addr=None, at=AT)
    assert search is not None and _errors(validators, search) == [] and search["action"] == "E"
    assert base64.b64decode(search["entity"][0]["query"]).decode() == "patient=p1&code=1975-2"
    assert search["entity"][1]["what"] == {"reference": "Patient/p1"}
    refused = audit_event(method="GET", path="/fhir/Patient/p2", query="", status=401, principal=None,
                          client_addr="10.0.0.9", at=AT)
    assert refused is not None and _errors(validators, refused) == []
    assert refused["outcome"] == "4" and refused["agent"][0]["who"]["display"] == "unauthenticated caller"
    create = audit_event(method="POST", path="/fhir/Observation", query="", status=201, principal=WHO,
                         client_addr=None, at=AT)
    assert create is not None and create["action"] == "C" and _errors(validators, create) == []


def test_dicomweb_and_api_events(validators: dict[str, Any]) -> None:
    retrieve = audit_event(method="GET", path="/dicomweb/studies/1.2.3/series/4.5/instances/6.7/rendered", query="",
                           status=200, principal=WHO, client_addr=None, at=AT)
    assert retrieve is not None and retrieve["type"]["code"] == "110103" and _errors(validators, retrieve) == []
    assert retrieve["entity"][0]["what"]["identifier"]["value"] == "urn:oid:1.2.3"
    query = audit_event(method="GET", path="/dicomweb/studies", query="PatientID=77654033", status=200,
                        principal=WHO, client_addr=None, at=AT)
    assert query is not None and query["type"]["code"] == "110112" and _errors(validators, query) == []
    stow = audit_event(method="POST", path="/dicomweb/studies", query="", status=200, principal=WHO,
                       client_addr=None, at=AT)
    assert stow is not None and stow["type"]["code"] == "110104" and stow["action"] == "C"
    report = audit_event(method="GET", path="/api/reports/3", query="", status=200, principal=WHO,
                         client_addr=None, at=AT)
    assert report is not None and _errors(validators, report) == []


def test_no_event_for_what_is_not_patient_data() -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/fhir/metadata", "/fhir/.well-known/smart-configuration",
                 "/api/apps", "/api/routing/rules", "/api/destinations", "/", "/docs"):
        assert audit_event(method="GET", path=path, query="", status=200, principal=WHO, client_addr=None,
                           at=AT) is None, path


def test_signoff_event(validators: dict[str, Any]) -> None:
    ev = signoff_event(report_id=4, action="reject", status_after="cancelled", reader_id="dr.jane",
                       reader_name="Jane Doe", client_id="interop-worklist", reason="motion artefact", at=AT,
                       report_identifier={"system": "urn:interop:ai-result", "value": "abc/report"})
    assert _errors(validators, ev) == [] and ev["subtype"][0]["code"] == "signoff"
    assert {d["type"]: d["valueString"] for d in ev["entity"][0]["detail"]} == {
        "verdict": "reject", "status": "cancelled", "reason": "motion artefact"}


def test_running_node_writes_searchable_events_that_the_api_cannot_edit(server: ServerProc,
                                                                        validators: dict[str, Any]) -> None:
    with server.client() as http:
        assert http.get("/fhir/Patient", params={"identifier": "MRN-1"}).status_code == 200
        assert http.get("/fhir/Observation/does-not-exist").status_code == 404
    assert httpx.get(f"{server.base_url}/fhir/Patient/x").status_code == 401
    with server.client() as http:
        deadline = time.monotonic() + 10
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            got = http.get("/fhir/AuditEvent", params={"_count": "50", "_sort": "date"}).json()
            events = [e["resource"] for e in got.get("entry") or []]
            if len(events) >= 3:
                break
            time.sleep(0.2)
        outcomes = sorted((e["subtype"][0]["code"], e["outcome"]) for e in events[:3])
        assert outcomes == [("read", "4"), ("read", "4"), ("search-type", "0")], events
        assert all(_errors(validators, e) == [] for e in events)
        assert http.get("/fhir/AuditEvent", params={"subtype": "read", "outcome": "4"}).json()["total"] >= 2
        # Never editable through the API.
        one = events[0]
        assert http.put(f"/fhir/AuditEvent/{one['id']}", json={**one, "outcome": "0"}).status_code == 405
        assert http.delete(f"/fhir/AuditEvent/{one['id']}").status_code == 405
        assert http.post("/fhir/AuditEvent", json=one).status_code == 405
