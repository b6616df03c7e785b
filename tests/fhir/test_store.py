"""FhirStore against each database the node supports (SQLite WAL and PostgreSQL): versioning, conditional
create/update, If-Match, delete safety, transactions (atomic) and batches (FHIR R4 http.html)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import pytest

from interop.errors import Conflict, Gone, InvalidInput, NotFound, PreconditionFailed
from interop.fhir import FhirStore
from interop.store.db import Database


@pytest.fixture
def store(database_url: str) -> FhirStore:
    db = Database(database_url)
    db.migrate()
    yield FhirStore(db)  # type: ignore[misc]
    db.dispose()


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": mrn}], **extra}


def observation(subject: str, code: str = "2160-0", when: str = "2024-03-05T10:00:00Z", **extra: Any
                ) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": subject}, "effectiveDateTime": when, **extra}


def test_create_assigns_id_and_version(store: FhirStore) -> None:
    got = store.create(patient("1", id="client-id"))
    assert got.status == 201 and got.version_id == 1 and got.id != "client-id"
    back = store.read("Patient", got.id)
    assert back.resource["meta"]["versionId"] == "1" and back.resource["identifier"][0]["value"] == "1"


def test_conditional_create_twice_stores_one(store: FhirStore) -> None:
    a = store.create(patient("7"), if_none_exist="identifier=urn:oid:1.2.3|7")
    b = store.create(patient("7"), if_none_exist="identifier=urn:oid:1.2.3|7")
    assert (a.status, b.status) == (201, 200) and a.id == b.id
    assert store.search("Patient", [("identifier", "urn:oid:1.2.3|7")])["total"] == 1


def test_update_with_stale_if_match_fails_412(store: FhirStore) -> None:
    a = store.create(patient("1"))
    b = store.update("Patient", a.id, {**a.resource, "gender": "female"}, if_match='W/"1"')
    assert b.version_id == 2
    with pytest.raises(PreconditionFailed):
        store.update("Patient", a.id, {**a.resource, "gender": "male"}, if_match='W/"1"')
    assert store.read("Patient", a.id).resource["gender"] == "female"
    assert store.vread("Patient", a.id, 1).resource.get("gender") is None
    assert [e["resource"]["meta"]["versionId"] for e in store.history("Patient", a.id, base="")["entry"]] == ["2", "1"]


def test_invalid_resource_names_the_path(store: FhirStore) -> None:
    with pytest.raises(InvalidInput) as err:
        store.create({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": 5}]}})
    assert err.value.expression == "Observation.code.coding[0].system"
    with pytest.raises(InvalidInput) as err:
        store.create({"resourceType": "Observation", "status": "done", "code": {"text": "x"}})
    assert err.value.expression == "Observation.status"


def test_delete_refused_while_referenced_then_gone(store: FhirStore) -> None:
    p = store.create(patient("1"))
    o = store.create(observation(f"Patient/{p.id}"))
    with pytest.raises(Conflict):
        store.delete("Patient", p.id)
    store.delete("Observation", o.id)
    store.delete("Patient", p.id)
    with pytest.raises(Gone):
        store.read("Patient", p.id)
    with pytest.raises(NotFound):
        store.read("Patient", "nope")
    assert store.search("Patient", [])["total"] == 0


def test_transaction_rewrites_urn_references(store: FhirStore) -> None:
    out = store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:obs", "resource": observation("urn:uuid:pat"),
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:pat", "resource": patient("9"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:oid:1.2.3|9"}},
    ]})
    obs, pat = (e["resource"] for e in out["entry"])
    assert obs["subject"]["reference"] == f"Patient/{pat['id']}"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]


def test_transaction_with_one_bad_entry_stores_nothing(store: FhirStore) -> None:
    with pytest.raises(InvalidInput) as err:
        store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient("1"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final"},
             "request": {"method": "POST", "url": "Observation"}},
        ]})
    assert "entry[1]" in err.value.message
    assert store.search("Patient", [])["total"] == 0


def test_conditional_update_creates_then_updates(store: FhirStore) -> None:
    a = store.conditional_update("Observation", "identifier=urn:lab|42",
                                 observation("Patient/x", identifier=[{"system": "urn:lab", "value": "42"}]))
    b = store.conditional_update("Observation", "identifier=urn:lab|42",
                                 observation("Patient/x", identifier=[{"system": "urn:lab", "value": "42"}],
                                             status="amended"))
    assert a.id == b.id and (a.status, b.status) == (201, 200) and b.version_id == 2


def test_batch_entries_fail_alone(store: FhirStore) -> None:
    out = store.batch({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("1"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
    ]})
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "404 Not Found"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == mode]


def test_search_date_prefixes(store: FhirStore) -> None:
    ids = {when: store.create(observation("Patient/p", when=when)).id
           for when in ("2024-01-15", "2024-02-10T08:00:00Z", "2024-03-01T00:00:00+02:00")}
    def find(q: str) -> set[str]:
        return set(_ids(store.search("Observation", [("date", q)])))
    assert find("2024-01") == {ids["2024-01-15"]}
    assert find("ge2024-02-10") == {ids["2024-02-10T08:00:00Z"], ids["2024-03-01T00:00:00+02:00"]}
    assert find("lt2024-02-10") == {ids["2024-01-15"]}
    assert find("gt2024-02-28") == {ids["2024-03-01T00:00:00+02:00"]}
    assert find("2024-02-29") == {ids["2024-03-01T00:00:00+02:00"]}  # it is 22:00Z on the 29th
    assert find("le2024-01-15") == {ids["2024-01-15"]}
    assert find("ne2024-01-15") == set(ids.values()) - {ids["2024-01-15"]}


def test_search_tokens_references_includes(store: FhirStore) -> None:
    p = store.create(patient("1"))
    o1 = store.create(observation(f"Patient/{p.id}", code="2160-0", category=[
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]))
    store.create(observation(f"Patient/{p.id}", code="718-7"))
    r = store.create({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "panel"},
                      "subject": {"reference": f"Patient/{p.id}"}, "result": [{"reference": f"Observation/{o1.id}"}]})
    assert _ids(store.search("Observation", [("code", "http://loinc.org|2160-0")])) == [o1.id]
    assert _ids(store.search("Observation", [("code", "|2160-0")])) == []
    assert _ids(store.search("Observation", [("category", "laboratory")])) == [o1.id]
    assert len(_ids(store.search("Observation", [("subject", f"Patient/{p.id}"), ("status", "final")]))) == 2
    b = store.search("DiagnosticReport", [("patient", p.id), ("_include", "DiagnosticReport:result"),
                                          ("_include", "DiagnosticReport:subject")])
    assert _ids(b) == [r.id] and set(_ids(b, "include")) == {o1.id, p.id}
    b = store.search("Patient", [("_id", p.id), ("_revinclude", "Observation:patient")])
    assert len(_ids(b, "include")) == 2


def test_search_unknown_param_strict_and_lenient(store: FhirStore) -> None:
    with pytest.raises(InvalidInput):
        store.search("Patient", [("shoe-size", "9")], strict=True)
    b = store.search("Patient", [("shoe-size", "9")])
    assert b["entry"][-1]["search"]["mode"] == "outcome" and "shoe-size" not in b["link"][0]["url"]


def test_paging_is_consistent_under_concurrent_writes(store: FhirStore) -> None:
    made = [store.create(observation("Patient/p", when=f"2024-01-{d:02d}")).id for d in range(1, 26)]
    for params, gone in (([("_count", "10")], made[-1]), ([("_count", "10"), ("_sort", "-date")], made[0])):
        live = {e["resource"]["id"] for e in store.search("Observation", [("_count", "1000")])["entry"]}
        page = store.search("Observation", params, base="http://h/fhir")
        total = page["total"]
        seen = _ids(page)
        store.create(observation("Patient/p"))  # created after the first page: never shown
        store.delete("Observation", gone)  # deleted before its page: missing, nothing else shifts
        while nxt := [ln["url"] for ln in page["link"] if ln["relation"] == "next"]:
            page = store.search("Observation", parse_qsl(nxt[0].split("?", 1)[1]))
            seen += _ids(page)
        assert total == len(live)
        assert len(seen) == len(set(seen)) and set(seen) == live - {gone}
        if params[-1][0] == "_sort":
            dates = [store.read("Observation", i).resource["effectiveDateTime"] for i in seen]
            assert dates == sorted(dates, reverse=True)
