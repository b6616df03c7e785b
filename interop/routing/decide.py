"""Routing decisions as pure functions: which apps a ready study, or a patient's labs, go to.

Inputs are plain facts (:class:`StudyFacts`, :class:`LabFact`) that the router reads from the store; the
output is a list of :class:`Decision` with the exact input each job gets. No I/O here.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from interop.config import LabMatch, RoutingRule, StudyMatch

LOINC = "http://loinc.org"


@dataclass(frozen=True)
class SeriesFacts:
    series_uid: str
    modality: str | None
    body_part: str | None
    description: str | None
    sop_classes: frozenset[str]
    calling_aes: frozenset[str]
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class StudyFacts:
    study_uid: str
    patient_id: str | None
    series: tuple[SeriesFacts, ...]
    ready_at: dt.datetime


@dataclass(frozen=True)
class LabFact:
    """One Observation version: what it measures, when, and its version-specific reference."""

    reference: str  # "Observation/<id>/_history/<version>"
    codes: frozenset[str]  # "system|code" tokens of Observation.code.coding
    effective: dt.datetime
    status: str


@dataclass(frozen=True)
class Decision:
    rule: str
    app: str
    priority: str
    trigger: str  # "study" | "labs"
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    observations: tuple[str, ...] = ()
    #: Why it fired, for the job's record (e.g. "CR/CHEST series 1.2.3 matched").
    reason: str = ""
    missing: tuple[str, ...] = field(default=(), compare=False)


def _any_of(wanted: list[str], value: str | None) -> bool:
    return not wanted or (value is not None and value.strip().upper() in {w.strip().upper() for w in wanted})


def series_matches(match: StudyMatch, s: SeriesFacts) -> bool:
    """All criteria of ``match`` hold for series ``s`` (each list is any-of; empty lists match anything)."""
    if not _any_of(match.modalities, s.modality) or not _any_of(match.body_parts, s.body_part):
        return False
    if match.sop_classes and not (set(match.sop_classes) & s.sop_classes):
        return False
    if match.calling_aes and not ({a.strip().upper() for a in match.calling_aes} & {a.upper() for a in s.calling_aes}):
        return False
    if match.series_description is not None:
        return re.search(match.series_description, s.description or "", re.IGNORECASE) is not None
    return True


def lab_token(code: str) -> str:
    """A lab code as a ``system|code`` search token (a bare code is LOINC)."""
    return code if "|" in code else f"{LOINC}|{code}"


#: Observation statuses that count as a result (FHIR R4 observation-status); others are ignored.
RESULT_STATUSES = frozenset({"preliminary", "final", "amended", "corrected"})


def lab_set(labs: LabMatch, facts: list[LabFact], now: dt.datetime) -> tuple[list[str], list[str]]:
    """The latest result for each code of the set within the window: (references, codes missing)."""
    since = now - dt.timedelta(hours=labs.within_hours)
    chosen: list[str] = []
    missing: list[str] = []
    for code in labs.codes:
        token = lab_token(code)
        hits = [f for f in facts if token in f.codes and f.status in RESULT_STATUSES and since <= f.effective <= now]
        if not hits:
            missing.append(code)
            continue
        latest = max(hits, key=lambda f: (f.effective, f.reference))
        if latest.reference not in chosen:
            chosen.append(latest.reference)
    return sorted(chosen), missing


def decide_study(rules: list[RoutingRule], study: StudyFacts, labs: list[LabFact] | None = None) -> list[Decision]:
    """Decisions for a ready study: one per enabled rule with a ``study`` match that some series satisfies
    (and, for a rule with a lab set too, whose lab set the patient has within the window before the study
    became ready). The input is every instance of the matching series."""
    out: list[Decision] = []
    for rule in rules:
        if not rule.enabled or rule.study is None:
            continue
        match = rule.study
        series = [s for s in study.series if series_matches(match, s)]
        if not series:
            continue
        observations: list[str] = []
        if rule.labs is not None:
            observations, missing = lab_set(rule.labs, labs or [], study.ready_at)
            if missing:
                continue
        sops = tuple(sorted(uid for s in series for uid in s.sop_instance_uids))
        desc = ", ".join(f"{s.modality or '?'}/{s.body_part or '?'} series {s.series_uid}" for s in series)
        out.append(Decision(
            rule=rule.name, app=rule.app, priority=rule.priority, trigger="study",
            series_uids=tuple(sorted(s.series_uid for s in series)), sop_instance_uids=sops,
            observations=tuple(observations), reason=f"{desc} matched rule {rule.name}",
        ))
    return out


def decide_labs(rules: list[RoutingRule], labs: list[LabFact], now: dt.datetime) -> list[Decision]:
    """Decisions for a patient whose results changed: one per enabled lab-only rule whose whole lab set the
    patient has within the window ending ``now``."""
    out: list[Decision] = []
    for rule in rules:
        if not rule.enabled or rule.study is not None or rule.labs is None:
            continue
        chosen, missing = lab_set(rule.labs, labs, now)
        if missing:
            continue
        out.append(Decision(rule=rule.name, app=rule.app, priority=rule.priority, trigger="labs",
                            observations=tuple(chosen), reason=f"lab set of rule {rule.name} complete"))
    return out


def lab_codes(rules: list[RoutingRule]) -> set[str]:
    """Every ``system|code`` token some enabled rule's lab set needs (what the router has to look at)."""
    return {lab_token(c) for r in rules if r.enabled and r.labs is not None for c in r.labs.codes}
