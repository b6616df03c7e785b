"""The FHIR REST API of a running ``interop serve``, driven with httpx and the ``fhirclient`` library
(FHIR R4 http.html): headers, conditional create, If-Match, search, Bundles, and every error an
OperationOutcome with the right status while the server stays up."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ServerProc

FHIR_JSON = "application/fhir+json"


@pytest.fixture
def fhir(server: ServerProc) -> httpx.Client:
    client = server.client()
    client.base_url = httpx.URL(f"{server.base_url}/fhir/")
    client.headers["Content-Type"] = FHIR_JSON
    return client


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": mrn}], **extra}


def observation(subject: str, when: str = "2024-03-05T10:00:00Z", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
            "subject": {"reference": subject}, "effectiveDateTime": when, **extra}


def assert_outcome(r: httpx.Response, status: int, expression: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    if expression is not None:
        assert expression in body["issue"][0].get("expression", []), body
    return body


def test_create_read_update_headers(fhir: httpx.Client) -> None:
    r = fhir.post("Patient", json=patient("1"))
    assert r.status_code == 201 and r.headers["etag"] == 'W/"1"' and "last-modified" in r.headers
    pid = r.json()["id"]
    assert r.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    r = fhir.get(f"Patient/{pid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON) and r.json()["id"] == pid
    body = {**r.json(), "gender": "female"}
    assert fhir.put(f"Patient/{pid}", json=body, headers={"If-Match": 'W/"1"'}).headers["etag"] == 'W/"2"'
    assert_outcome(fhir.put(f"Patient/{pid}", json=body, headers={"If-Match": 'W/"1"'}), 412)
    assert fhir.get(f"Patient/{pid}/_history/1").json().get("gender") is None
    assert fhir.get(f"Patient/{pid}/_history").json()["total"] == 2


def test_conditional_create_twice_makes_one(fhir: httpx.Client) -> None:
    hdr = {"If-None-Exist": "identifier=urn:oid:1.2.3|42"}
    a, b = fhir.post("Patient", json=patient("42"), headers=hdr), fhir.post("Patient", json=patient("42"), headers=hdr)
    assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
    assert fhir.get("Patient", params={"identifier": "urn:oid:1.2.3|42"}).json()["total"] == 1


def test_bad_input_gets_operation_outcome_and_server_stays_up(fhir: httpx.Client) -> None:
    assert_outcome(fhir.post("Patient", content=b"{not json"), 400)
    assert_outcome(fhir.post("Patient", json={"resourceType": "Observation"}), 400, "resourceType")
    assert_outcome(fhir.post("Observation", json={"resourceType": "Observation", "status": "final",
                                                  "code": {"text": "x"}, "valueQuantity": {"value": "a lot"}}),
                   400, "Observation.valueQuantity.value")
    assert_outcome(fhir.get("Specimen/1"), 404)
    assert_outcome(fhir.get("Patient/does-not-exist"), 404)
    assert_outcome(fhir.post("AuditEvent", json={"resourceType": "AuditEvent"}), 405)
    assert_outcome(fhir.get("Patient", params={"shoe-size": "9"}, headers={"Prefer": "handling=strict"}), 400,
                   "shoe-size")
    lenient = fhir.get("Patient", params={"shoe-size": "9"}, headers={"Prefer": "handling=lenient"}).json()
    assert lenient["entry"][-1]["resource"]["resourceType"] == "OperationOutcome"
    assert "shoe-size" not in lenient["link"][0]["url"]
    pid = fhir.post("Patient", json=patient("1")).json()["id"]
    fhir.post("Observation", json=observation(f"Patient/{pid}"))
    assert_outcome(fhir.delete(f"Patient/{pid}"), 409)
    assert fhir.get("Patient", params={"_id": pid}).json()["total"] == 1
    assert httpx.get(fhir.base_url.join("/healthz")).status_code == 200


def test_delete_then_gone(fhir: httpx.Client) -> None:
    pid = fhir.post("Patient", json=patient("1")).json()["id"]
    assert fhir.delete(f"Patient/{pid}").status_code == 204
    assert_outcome(fhir.get(f"Patient/{pid}"), 410)


def test_token_and_scopes_enforced(server: ServerProc) -> None:
    base = f"{server.base_url}/fhir"
    assert httpx.get(f"{base}/metadata").status_code == 200
    assert_outcome(httpx.get(f"{base}/Patient"), 401)
    with server.client("system/Patient.rs") as reader:
        assert reader.get(f"{base}/Patient").status_code == 200
        assert_outcome(reader.post(f"{base}/Patient", json=patient("1")), 403)
        assert_outcome(reader.get(f"{base}/Observation"), 403)


def test_metadata_lists_what_is_implemented(server: ServerProc) -> None:
    from interop.fhir.registry import RESOURCES

    cap = httpx.get(f"{server.base_url}/fhir/metadata").json()
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    rest = {r["type"]: r for r in cap["rest"][0]["resource"]}
    assert set(rest) == set(RESOURCES)
    assert {p["name"] for p in rest["Observation"]["searchParam"]} >= {"_id", "_lastUpdated", "patient", "code",
                                                                      "date", "based-on", "category", "status"}
    assert "Observation:patient" in rest["Observation"]["searchInclude"]
    assert [i["code"] for i in rest["AuditEvent"]["interaction"]] == ["read", "vread", "history-instance",
                                                                      "search-type"]


def test_search_over_http(fhir: httpx.Client) -> None:
    pid = fhir.post("Patient", json=patient("1")).json()["id"]
    for day in range(1, 8):
        fhir.post("Observation", json=observation(f"Patient/{pid}", when=f"2024-05-0{day}"))
    got = fhir.get("Observation", params=[("patient", pid), ("date", "ge2024-05-03"), ("date", "lt2024-05-06"),
                                          ("_include", "Observation:patient"), ("_sort", "-date")]).json()
    assert got["total"] == 3
    assert [e["resource"].get("effectiveDateTime") for e in got["entry"]] == \
        ["2024-05-05", "2024-05-04", "2024-05-03", None]
    assert got["entry"][-1]["search"]["mode"] == "include"
    posted = fhir.post("Observation/_search", content=f"patient=Patient/{pid}&_count=3",
                       headers={"Content-Type": "application/x-www-form-urlencoded"}).json()
    assert posted["total"] == 7 and len(posted["entry"]) == 3
    ids = [e["resource"]["id"] for e in posted["entry"]]
    while nxt := [ln["url"] for ln in posted["link"] if ln["relation"] == "next"]:
        posted = fhir.get(nxt[0]).json()
        ids += [e["resource"]["id"] for e in posted["entry"]]
    assert len(set(ids)) == 7


def test_transaction_is_atomic_over_http(fhir: httpx.Client) -> None:
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": patient("5"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "subject": {"reference": "urn:uuid:p"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    assert_outcome(fhir.post("", json=bad), 400)
    assert fhir.get("Patient").json()["total"] == 0
    bad["entry"][1]["resource"]["code"] = {"text": "creatinine"}  # type: ignore[index]
    r = fhir.post("", json=bad)
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"
    obs = r.json()["entry"][1]["resource"]
    assert obs["subject"]["reference"].startswith("Patient/")
    assert fhir.get(obs["subject"]["reference"]).status_code == 200


def test_fhirclient_library_round_trip(server: ServerProc) -> None:
    """The python ``fhirclient`` (SMART on FHIR) models against the server: create, read, search."""
    from fhirclient import client
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    smart = client.FHIRClient(settings={"app_id": "interop-tests", "api_base": f"{server.base_url}/fhir/"})
    smart.server.session.headers["Authorization"] = f"Bearer {server.token()}"
    assert smart.server.capabilityStatement.fhirVersion == "4.0.1"
    pat = Patient(patient("77"))
    created = pat.create(smart.server)
    assert created is not None and created["resourceType"] == "Patient"
    pid = created["id"]
    back = Patient.read(pid, smart.server)
    assert back.identifier[0].value == "77"
    Observation(observation(f"Patient/{pid}")).create(smart.server)
    found = list(Observation.where(struct={"patient": pid}).perform_resources_iter(smart.server))
    assert len(found) == 1 and found[0].subject.reference == f"Patient/{pid}"


def test_rest_interactions_on_postgresql(server_factory: Any, postgres_url: str) -> None:
    """The same REST answers when the store is PostgreSQL (its timestamps come back in the session's zone;
    Last-Modified must still be an HTTP-date in GMT)."""
    srv = server_factory({"INTEROP_DATABASE_URL": postgres_url})
    with srv.client() as http:
        created = http.post("/fhir/Patient", json=patient("PG1"), headers={"Content-Type": FHIR_JSON})
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        for url in (f"/fhir/Patient/{pid}", f"/fhir/Patient/{pid}/_history/1"):
            r = http.get(url)
            assert r.status_code == 200, r.text
            assert r.headers["Last-Modified"].endswith(" GMT") and r.headers["ETag"] == 'W/"1"'
        obs = http.post("/fhir/Observation", json=observation(f"Patient/{pid}"), headers={"Content-Type": FHIR_JSON})
        assert obs.status_code == 201
        found = http.get("/fhir/Observation", params={"patient": f"Patient/{pid}", "date": "ge2024-03-01"}).json()
        assert found["total"] == 1
