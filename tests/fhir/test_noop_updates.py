"""Updates that change nothing store nothing (as HAPI FHIR does by default): an update, a conditional update
or a transaction ``PUT`` whose content equals the current version's, server-managed ``meta.versionId`` and
``meta.lastUpdated`` aside, answers 200 with the current version and leaves no history entry and no new
``lastUpdated`` (FHIR R4 http.html §3.1.0.4). Result Bundles are re-sent for exactly-once delivery; a re-sent
Bundle must leave the store as it was. SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from interop.errors import PreconditionFailed
from interop.fhir import FhirStore
from interop.fhir.models import FhirVersion
from interop.store.db import Database
from tests.conftest import ServerProc

LAB = "urn:lab"


@pytest.fixture
def store(database_url: str) -> Iterator[FhirStore]:
    db = Database(database_url)
    db.migrate()
    yield FhirStore(db)
    db.dispose()


def versions(store: FhirStore) -> int:
    """Every stored version of every resource (``fhir_versions`` rows)."""
    with store.db.reading() as s:
        return int(s.scalar(select(func.count()).select_from(FhirVersion)) or 0)


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": mrn}], **extra}


def observation(subject: str, lab_id: str, value: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "identifier": [{"system": LAB, "value": lab_id}], "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
            "subject": {"reference": subject}, "effectiveDateTime": "2024-03-05T10:00:00Z",
            "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                              "code": "mg/dL"}, **extra}


def test_update_with_the_same_content_keeps_the_version(store: FhirStore) -> None:
    a = store.create(patient("1", gender="female"))
    before = versions(store)
    # the stored resource as read back (with meta), and the same content written in another key order
    for body in (store.read("Patient", a.id).resource, {"gender": "female", "id": a.id, **patient("1")},
                 {**patient("1", gender="female"), "id": a.id, "meta": {}}):
        got = store.update("Patient", a.id, body)
        assert (got.status, got.version_id, got.last_updated) == (200, 1, a.last_updated)
        assert got.resource["meta"] == a.resource["meta"]
    assert versions(store) == before
    assert store.read("Patient", a.id).resource["meta"]["lastUpdated"] == a.resource["meta"]["lastUpdated"]
    assert store.history("Patient", a.id, base="")["total"] == 1


def test_update_with_any_change_makes_a_version(store: FhirStore) -> None:
    a = store.create(observation("Patient/p", "1", value=1.5))
    changes: list[dict[str, Any]] = [
        {"valueQuantity": {**a.resource["valueQuantity"], "value": 1.6}},  # a nested value
        {"valueQuantity": {**a.resource["valueQuantity"], "value": 1.60}},  # the same float: no change
        {"meta": {"tag": [{"system": "urn:t", "code": "x"}]}},  # meta other than versionId/lastUpdated
        {"note": [{"text": "re-run"}]},
    ]
    expected = [2, 2, 3, 4]
    body = {k: v for k, v in a.resource.items() if k != "meta"}
    for change, version in zip(changes, expected, strict=True):
        body = {**body, **change}
        assert store.update("Observation", a.id, body).version_id == version
    assert store.history("Observation", a.id, base="")["total"] == 4


def test_decimal_precision_is_a_change(store: FhirStore) -> None:
    a = store.create(observation("Patient/p", "1", value=2))
    got = store.update("Observation", a.id, {**observation("Patient/p", "1", value=2.0), "id": a.id})
    assert got.version_id == 2  # 2 and 2.0 are different FHIR decimals (precision)


def test_if_match_is_checked_before_the_comparison(store: FhirStore) -> None:
    a = store.create(patient("2"))
    same = {**patient("2"), "id": a.id}
    assert store.update("Patient", a.id, same, if_match='W/"1"').version_id == 1
    store.update("Patient", a.id, {**same, "gender": "male"})
    with pytest.raises(PreconditionFailed):
        store.update("Patient", a.id, {**same, "gender": "male"}, if_match='W/"1"')


def test_update_after_delete_recreates_even_with_the_old_content(store: FhirStore) -> None:
    a = store.create(patient("3"))
    store.delete("Patient", a.id)
    got = store.update("Patient", a.id, {**patient("3"), "id": a.id})
    assert (got.status, got.version_id) == (201, 3)


def test_conditional_update_with_the_same_content_writes_nothing(store: FhirStore) -> None:
    query = f"identifier={LAB}|7"
    a = store.conditional_update("Observation", query, observation("Patient/p", "7"))
    before = versions(store)
    b = store.conditional_update("Observation", query, observation("Patient/p", "7"))
    assert (b.id, b.status, b.version_id, b.last_updated) == (a.id, 200, 1, a.last_updated)
    assert versions(store) == before
    c = store.conditional_update("Observation", query, observation("Patient/p", "7", status="amended"))
    assert (c.id, c.version_id) == (a.id, 2)


def result_bundle() -> dict[str, Any]:
    """A result Bundle of PUTs only: the Patient and two Observations by conditional update, the second
    Observation deriving from the first by its urn:uuid, and a Device by id."""
    p, o1, o2 = "urn:uuid:9d0f7a58-0000-4000-8000-000000000001", "urn:uuid:9d0f7a58-0000-4000-8000-000000000002", \
        "urn:uuid:9d0f7a58-0000-4000-8000-000000000003"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p, "resource": patient("900"),
         "request": {"method": "PUT", "url": "Patient?identifier=urn:oid:1.2.3|900"}},
        {"fullUrl": o1, "resource": observation(p, "r1", value=4.2),
         "request": {"method": "PUT", "url": f"Observation?identifier={LAB}|r1"}},
        {"fullUrl": o2, "resource": observation(p, "r2", value=0.7, derivedFrom=[{"reference": o1}]),
         "request": {"method": "PUT", "url": f"Observation?identifier={LAB}|r2"}},
        {"resource": {"resourceType": "Device", "id": "ai-model-1", "deviceName": [
            {"name": "demo model", "type": "model-name"}]},
         "request": {"method": "PUT", "url": "Device/ai-model-1"}},
    ]}


def test_transaction_sent_again_with_only_puts_stores_nothing(store: FhirStore) -> None:
    first = store.transaction(result_bundle())
    assert [e["response"]["status"] for e in first["entry"]] == ["201 Created"] * 4
    before = versions(store)
    since = max(dt.datetime.fromisoformat(e["response"]["lastModified"].replace("Z", "+00:00"))
                for e in first["entry"])
    second = store.transaction(copy.deepcopy(result_bundle()))
    assert [e["response"]["status"] for e in second["entry"]] == ["200 OK"] * 4
    for a, b in zip(first["entry"], second["entry"], strict=True):
        assert b["response"]["location"] == a["response"]["location"]  # the same resource, version 1
        assert (b["response"]["etag"], b["response"]["lastModified"]) == ('W/"1"', a["response"]["lastModified"])
        assert b["resource"] == a["resource"]
    assert versions(store) == before
    instant = since.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for type_ in ("Patient", "Observation", "Device"):
        assert store.search(type_, [("_lastUpdated", f"gt{instant}")])["total"] == 0
    # one changed entry among the unchanged: only it gets a version
    changed = result_bundle()
    changed["entry"][2]["resource"]["valueQuantity"]["value"] = 0.8
    third = store.transaction(changed)
    assert [e["response"]["etag"] for e in third["entry"]] == ['W/"1"', 'W/"1"', 'W/"2"', 'W/"1"']
    assert versions(store) == before + 1


def test_transaction_put_twice_in_one_bundle_second_is_a_noop(store: FhirStore) -> None:
    bundle = result_bundle()
    bundle["entry"].append(copy.deepcopy(bundle["entry"][3]))  # the Device PUT twice
    out = store.transaction(bundle)
    assert [e["response"]["etag"] for e in out["entry"][3:]] == ['W/"1"', 'W/"1"']
    assert store.history("Device", "ai-model-1", base="")["total"] == 1


@pytest.fixture
def fhir(server: ServerProc) -> httpx.Client:
    client = server.client()
    client.base_url = httpx.URL(f"{server.base_url}/fhir/")
    client.headers["Content-Type"] = "application/fhir+json"
    return client


def test_put_with_the_same_content_over_http_answers_the_current_version(fhir: httpx.Client) -> None:
    r = fhir.post("Patient", json=patient("77", gender="other"))
    assert r.status_code == 201
    pid, modified = r.json()["id"], r.headers["last-modified"]
    again = fhir.put(f"Patient/{pid}", json={**patient("77", gender="other"), "id": pid},
                     headers={"If-Match": 'W/"1"'})
    assert again.status_code == 200 and again.headers["etag"] == 'W/"1"'
    assert again.headers["last-modified"] == modified and again.json()["meta"] == r.json()["meta"]
    assert again.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert fhir.get(f"Patient/{pid}/_history").json()["total"] == 1
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**patient("77", gender="other"), "id": pid},
         "request": {"method": "PUT", "url": f"Patient/{pid}"}},
    ]}
    out = fhir.post("", json=bundle)
    assert out.status_code == 200 and out.json()["entry"][0]["response"]["etag"] == 'W/"1"'
