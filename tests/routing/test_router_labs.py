"""The router's lab log: every changed Observation's patient is routed, even when one overlap window holds more
Observations than a page (a burst from the lab, or the first start over a filled store), and nothing is
routed twice for the same version while it stays inside the overlap. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interop.config import LabMatch, RoutingRule
from tests.jobs.conftest import Jobs, make_jobs


@pytest.fixture
def jobs(tmp_path: Path, database_url: str) -> Iterator[Jobs]:
    j = make_jobs(tmp_path, database_url)
    j.router.rules.put(RoutingRule(name="labs", app="probe", labs=LabMatch(codes=["2345-7"])))
    j.router.lab_page = 40
    yield j
    j.db.dispose()


def observation(patient: str, n: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "identifier": [{"system": "urn:lab", "value": f"{patient}-{n}"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2026-11-22T06:00:00Z",
            "valueQuantity": {"value": 90 + n, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                              "code": "mg/dL"}}


def post_all(jobs: Jobs, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return jobs.fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "POST", "url": "Observation"}} for r in resources]})


def routed(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def record(ref: str, now: Any = None, triggered_at: Any = None) -> list[int]:
        calls.append(ref)
        return []

    monkeypatch.setattr(jobs.router, "route_patient", record)
    return calls


def test_a_window_larger_than_a_page_is_read_to_its_end(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = routed(jobs, monkeypatch)
    patients = [f"p{i:03d}" for i in range(50)]
    post_all(jobs, [observation(p, n) for p in patients for n in range(5)])  # 250 in one commit: 7 pages

    jobs.router.poll()
    assert sorted(set(calls)) == [f"Patient/{p}" for p in patients]
    assert len(calls) <= 50 + 7  # a patient whose results straddle a page boundary is routed once per page

    calls.clear()
    jobs.router.poll()  # the same window again (the overlap): every version already routed
    assert calls == []

    # one more result in a busy window: only its patient, not the 250 before it
    post_all(jobs, [observation("p007", 99)])
    jobs.router.poll()
    assert calls == ["Patient/p007"]


def test_the_cursor_moves_past_a_full_window(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the lab log was read as the first N rows after (cursor - overlap); with more than N rows in the
    overlap every row read was already routed, the cursor stayed, and later results were never routed."""
    calls = routed(jobs, monkeypatch)
    post_all(jobs, [observation(f"a{i}", 0) for i in range(100)])
    jobs.router.poll()
    assert len(set(calls)) == 100
    for round_ in range(3):
        calls.clear()
        post_all(jobs, [observation(f"late{round_}", 0)])
        jobs.router.poll()
        assert calls == [f"Patient/late{round_}"]


def test_an_updated_result_routes_its_patient_again(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = routed(jobs, monkeypatch)
    out = post_all(jobs, [observation("u1", 0), observation("u2", 0)])
    jobs.router.poll()
    assert sorted(calls) == ["Patient/u1", "Patient/u2"]
    calls.clear()
    obs_id = out["entry"][1]["response"]["location"].split("/")[1]
    corrected = {**observation("u2", 0), "id": obs_id, "status": "corrected"}
    jobs.fhir.update("Observation", obs_id, corrected)
    jobs.router.poll()
    assert calls == ["Patient/u2"]


def test_a_result_outside_every_lab_set_routes_no_one(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a code some lab rule needs can complete a lab set: a metabolic panel's sodium is read, not routed."""
    calls = routed(jobs, monkeypatch)
    sodium = observation("p-na", 0)
    sodium["code"]["coding"][0]["code"] = "2951-2"
    other_system = observation("p-local", 0)
    other_system["code"]["coding"][0]["system"] = "urn:local-lab"  # the same code in another system
    post_all(jobs, [sodium, other_system])
    jobs.router.poll()
    assert calls == []
    post_all(jobs, [observation("p-na", 1)])  # glucose: in the rule's set
    jobs.router.poll()
    assert calls == ["Patient/p-na"]
