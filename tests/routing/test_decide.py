"""Routing decisions (interop.routing.decide): pure functions over study and lab facts."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from interop.config import LabMatch, RoutingRule, StudyMatch
from interop.routing.decide import LabFact, SeriesFacts, StudyFacts, decide_labs, decide_study, lab_set

CR = "1.2.840.10008.5.1.4.1.1.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def series(uid: str, modality: str, body: str | None = None, desc: str | None = None, cls: str = CR,
           ae: str = "PACS", n: int = 2) -> SeriesFacts:
    return SeriesFacts(uid, modality, body, desc, frozenset({cls}), frozenset({ae}),
                       tuple(f"{uid}.{i}" for i in range(n)))


def study(*s: SeriesFacts) -> StudyFacts:
    return StudyFacts("1.2.3", "PAT1", tuple(s), NOW)


def rule(name: str = "r", app: str = "cxr_triage", **study_kw: object) -> RoutingRule:
    return RoutingRule(name=name, app=app, study=StudyMatch(**study_kw))  # type: ignore[arg-type]


def lab(ref: str, code: str, hours_ago: float, status: str = "final") -> LabFact:
    return LabFact(ref, frozenset({f"http://loinc.org|{code}"}), NOW - dt.timedelta(hours=hours_ago), status)


def test_decide_study_selects_only_matching_series() -> None:
    s = study(series("1.1", "CR", "CHEST"), series("1.2", "CR", "HAND"), series("1.3", "SR", None))
    [d] = decide_study([rule(modalities=["CR", "DX"], body_parts=["chest"])], s)
    assert d.series_uids == ("1.1",)
    assert d.sop_instance_uids == ("1.1.0", "1.1.1")
    assert d.app == "cxr_triage" and d.trigger == "study"


def test_decide_study_no_match_no_decision() -> None:
    s = study(series("1.1", "CT", "CHEST"))
    assert decide_study([rule(modalities=["CR"])], s) == []


def test_decide_study_several_apps_for_one_study() -> None:
    s = study(series("1.1", "CR", "CHEST"), series("1.2", "MR", "BRAIN", cls=MR))
    rules = [rule("a", "cxr_triage", modalities=["CR"]), rule("b", "mr_segmentation", modalities=["MR"])]
    assert {d.app for d in decide_study(rules, s)} == {"cxr_triage", "mr_segmentation"}


def test_decide_study_disabled_rule_ignored() -> None:
    r = rule(modalities=["CR"]).model_copy(update={"enabled": False})
    assert decide_study([r], study(series("1.1", "CR"))) == []


@pytest.mark.parametrize(("criteria", "hit"), [
    ({"series_description": r"^PA\b"}, True),
    ({"series_description": "lateral"}, False),
    ({"sop_classes": [CR]}, True),
    ({"sop_classes": [MR]}, False),
    ({"calling_aes": ["pacs"]}, True),
    ({"calling_aes": ["OTHER"]}, False),
])
def test_decide_study_each_criterion(criteria: dict[str, object], hit: bool) -> None:
    s = study(series("1.1", "CR", "CHEST", desc="PA chest"))
    assert bool(decide_study([rule(**criteria)], s)) is hit


def test_decide_study_with_lab_set_needs_the_labs() -> None:
    r = RoutingRule(name="r", app="x", study=StudyMatch(modalities=["CR"]), labs=LabMatch(codes=["1", "2"]))
    s = study(series("1.1", "CR"))
    assert decide_study([r], s, [lab("Observation/a/_history/1", "1", 1)]) == []
    [d] = decide_study([r], s, [lab("Observation/a/_history/1", "1", 1), lab("Observation/b/_history/2", "2", 5)])
    assert d.observations == ("Observation/a/_history/1", "Observation/b/_history/2")


def test_lab_set_latest_within_window_and_status() -> None:
    facts = [lab("Observation/old/_history/1", "1", 100), lab("Observation/new/_history/3", "1", 2),
             lab("Observation/newer/_history/1", "1", 1, status="entered-in-error"),
             lab("Observation/x/_history/1", "2", 80)]
    chosen, missing = lab_set(LabMatch(codes=["1", "2"], within_hours=72), facts, NOW)
    assert chosen == ["Observation/new/_history/3"]
    assert missing == ["2"]


def test_decide_labs_only_lab_rules_fire() -> None:
    lab_rule = RoutingRule(name="labs", app="lab_severity", labs=LabMatch(codes=["1975-2", "1751-7"]))
    study_rule = rule(modalities=["CR"])
    facts = [lab("Observation/a/_history/1", "1975-2", 1), lab("Observation/b/_history/1", "1751-7", 1)]
    [d] = decide_labs([lab_rule, study_rule], facts, NOW)
    assert d.app == "lab_severity" and d.trigger == "labs"
    assert decide_labs([lab_rule], facts[:1], NOW) == []


def test_rule_needs_a_trigger_and_valid_regex() -> None:
    with pytest.raises(ValidationError, match="needs a 'study' match"):
        RoutingRule(name="r", app="x")
    with pytest.raises(ValidationError, match="regular expression"):
        RoutingRule(name="r", app="x", study=StudyMatch(series_description="("))
