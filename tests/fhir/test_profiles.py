"""Our profiles (fhir_profiles/): the examples conform, the checker finds each kind of violation with its
path, and the store refuses a resource that claims a profile it breaks (422)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_profiles import HERE, check, check_claimed_profiles, profile_url, profiles
from interop.errors import Unprocessable
from interop.fhir.validation import validate_resource


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / "examples" / name).read_text())
    return data


EXAMPLES = sorted(p.name for p in (HERE / "examples").glob("*.json"))


def test_every_profile_loads_with_enforceable_constraints() -> None:
    assert set(profiles()) == {profile_url(n) for n in ("ai-diagnostic-report", "ai-lab-report", "ai-observation",
                                                        "ai-lab-observation", "ai-recommendation",
                                                        "ai-recommendation-reviewed")}


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_conform_and_are_valid_r4(name: str) -> None:
    data = example(name)
    assert check_claimed_profiles(data) == []
    validate_resource(data)


def test_report_violations_are_named_by_path() -> None:
    report = example("DiagnosticReport-example-ai-report.json")
    report.update(status="partial", performer=[{"reference": "Practitioner/x"}])
    del report["category"]
    problems = dict((where, msg) for msg, where in check(report, profiles()[profile_url("ai-diagnostic-report")]))
    assert set(problems) == {"DiagnosticReport.status", "DiagnosticReport.category", "DiagnosticReport.performer[0]"}


def test_recommendation_fixed_values() -> None:
    sr = example("ServiceRequest-example-ai-recommendation.json")
    sr.update(status="active", intent="order")
    with pytest.raises(Unprocessable) as err:
        validate_resource(sr)
    exprs = [i["expression"][0] for i in err.value.operation_outcome()["issue"]]
    assert exprs == ["ServiceRequest.status", "ServiceRequest.intent"] and err.value.http_status == 422


def test_lab_report_refuses_an_imaging_study_and_the_rad_category() -> None:
    report = example("DiagnosticReport-example-ai-lab-report.json")
    report.update(imagingStudy=[{"reference": "ImagingStudy/x"}],
                  category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}])
    problems = {where for _, where in check(report, profiles()[profile_url("ai-lab-report")])}
    assert problems == {"DiagnosticReport.imagingStudy", "DiagnosticReport.category"}


def test_reviewed_recommendation_is_active_or_revoked_and_still_a_proposal() -> None:
    sr = example("ServiceRequest-example-ai-recommendation-reviewed.json")
    reviewed = profiles()[profile_url("ai-recommendation-reviewed")]
    assert check({**sr, "status": "revoked"}, reviewed) == []
    assert [where for _, where in check({**sr, "status": "draft", "intent": "order"}, reviewed)] == [
        "ServiceRequest.status", "ServiceRequest.intent"]


def test_unclaimed_profile_is_not_enforced() -> None:
    sr = example("ServiceRequest-example-ai-recommendation.json")
    sr.update(status="active", intent="order", meta={})
    validate_resource(sr)


def test_checker_refuses_constraints_it_cannot_enforce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fhir_profiles

    (tmp_path / "structuredefinitions").mkdir()
    (tmp_path / "valuesets").mkdir()
    sd = json.loads((HERE / "structuredefinitions" / "ai-observation.json").read_text())
    sd["differential"]["element"].append({"id": "Observation.code.coding", "path": "Observation.code.coding",
                                          "slicing": {"rules": "open"}})
    (tmp_path / "structuredefinitions" / "x.json").write_text(json.dumps(sd))
    monkeypatch.setattr(fhir_profiles, "HERE", tmp_path)
    fhir_profiles.profiles.cache_clear()
    try:
        with pytest.raises(ValueError, match="does not enforce"):
            fhir_profiles.profiles()
    finally:
        monkeypatch.undo()
        fhir_profiles.profiles.cache_clear()
