"""What the FHIR facade serves: resource types, their interactions, and their search parameters.

One registry feeds the store's search index, the search parser and the CapabilityStatement
(FHIR R4 §2.11 capabilitystatement.html), so what ``/fhir/metadata`` declares is what is implemented.
Search parameter names, types and expressions follow the R4 definitions (search.html §3.1.1, and each
resource's "Search Parameters" table); only the parameters listed here are supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ParamKind = Literal["token", "reference", "date", "string", "quantity"]

#: FHIR R4 restful-interaction codes (valueset-type-restful-interaction).
ALL_INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
READ_ONLY = ("read", "vread", "history-instance", "search-type")


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter: its R4 name, type and the JSON paths (FHIRPath-like, choice types spelled out)
    whose values it indexes. ``targets`` restricts a reference parameter to these resource types."""

    name: str
    kind: ParamKind
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    doc: str = ""

    @property
    def expression(self) -> str:
        return " | ".join(self.paths)


@dataclass(frozen=True, slots=True)
class ResourceDef:
    """A served resource type: its interactions, search parameters and the codes its required-bound
    ``status`` element takes (R4 value set of that element, checked on write)."""

    type: str
    params: tuple[SearchParam, ...]
    interactions: tuple[str, ...] = ALL_INTERACTIONS
    statuses: frozenset[str] = field(default_factory=frozenset)

    def param(self, name: str) -> SearchParam | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


def _p(name: str, kind: ParamKind, *paths: str, targets: tuple[str, ...] = (), doc: str = "") -> SearchParam:
    return SearchParam(name, kind, paths, targets, doc)


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _effective(t: str) -> tuple[str, ...]:
    return (f"{t}.effectiveDateTime", f"{t}.effectivePeriod", f"{t}.effectiveInstant")


_PATIENT = ("Patient",)

RESOURCES: dict[str, ResourceDef] = {
    d.type: d
    for d in (
        ResourceDef(
            "Patient",
            (
                _p("identifier", "token", "Patient.identifier"),
                _p("name", "string", "Patient.name"),
                _p("family", "string", "Patient.name.family"),
                _p("given", "string", "Patient.name.given"),
                _p("birthdate", "date", "Patient.birthDate"),
                _p("gender", "token", "Patient.gender"),
                _p("active", "token", "Patient.active"),
            ),
        ),
        ResourceDef(
            "Observation",
            (
                _p("identifier", "token", "Observation.identifier"),
                _p("patient", "reference", "Observation.subject", targets=_PATIENT),
                _p("subject", "reference", "Observation.subject"),
                _p("code", "token", "Observation.code"),
                _p("category", "token", "Observation.category"),
                _p("status", "token", "Observation.status"),
                _p("date", "date", *_effective("Observation")),
                _p("based-on", "reference", "Observation.basedOn"),
                _p("focus", "reference", "Observation.focus"),
                _p("derived-from", "reference", "Observation.derivedFrom"),
                _p("has-member", "reference", "Observation.hasMember"),
                _p("performer", "reference", "Observation.performer"),
                _p("device", "reference", "Observation.device"),
                _p("value-quantity", "quantity", "Observation.valueQuantity"),
            ),
            statuses=_codes("registered preliminary final amended corrected cancelled entered-in-error unknown"),
        ),
        ResourceDef(
            "DiagnosticReport",
            (
                _p("identifier", "token", "DiagnosticReport.identifier"),
                _p("patient", "reference", "DiagnosticReport.subject", targets=_PATIENT),
                _p("subject", "reference", "DiagnosticReport.subject"),
                _p("code", "token", "DiagnosticReport.code"),
                _p("category", "token", "DiagnosticReport.category"),
                _p("status", "token", "DiagnosticReport.status"),
                _p("date", "date", *_effective("DiagnosticReport")),
                _p("issued", "date", "DiagnosticReport.issued"),
                _p("based-on", "reference", "DiagnosticReport.basedOn"),
                _p("result", "reference", "DiagnosticReport.result"),
                _p("performer", "reference", "DiagnosticReport.performer"),
                _p("results-interpreter", "reference", "DiagnosticReport.resultsInterpreter"),
            ),
            statuses=_codes(
                "registered partial preliminary final amended corrected appended cancelled entered-in-error unknown"
            ),
        ),
        ResourceDef(
            "ServiceRequest",
            (
                _p("identifier", "token", "ServiceRequest.identifier"),
                _p("patient", "reference", "ServiceRequest.subject", targets=_PATIENT),
                _p("subject", "reference", "ServiceRequest.subject"),
                _p("code", "token", "ServiceRequest.code"),
                _p("category", "token", "ServiceRequest.category"),
                _p("status", "token", "ServiceRequest.status"),
                _p("intent", "token", "ServiceRequest.intent"),
                _p("authored", "date", "ServiceRequest.authoredOn"),
                _p("occurrence", "date", "ServiceRequest.occurrenceDateTime", "ServiceRequest.occurrencePeriod"),
                _p("based-on", "reference", "ServiceRequest.basedOn"),
                _p("replaces", "reference", "ServiceRequest.replaces"),
                _p("requester", "reference", "ServiceRequest.requester"),
                _p("performer", "reference", "ServiceRequest.performer"),
                _p("requisition", "token", "ServiceRequest.requisition"),
            ),
            statuses=_codes("draft active on-hold revoked completed entered-in-error unknown"),
        ),
        ResourceDef(
            "ImagingStudy",
            (
                _p("identifier", "token", "ImagingStudy.identifier"),
                _p("patient", "reference", "ImagingStudy.subject", targets=_PATIENT),
                _p("subject", "reference", "ImagingStudy.subject"),
                _p("status", "token", "ImagingStudy.status"),
                _p("started", "date", "ImagingStudy.started"),
                _p("basedon", "reference", "ImagingStudy.basedOn"),
                _p("modality", "token", "ImagingStudy.series.modality"),
                _p("series", "token", "ImagingStudy.series.uid"),
                _p("endpoint", "reference", "ImagingStudy.endpoint"),
            ),
            statuses=_codes("registered available cancelled entered-in-error unknown"),
        ),
        ResourceDef(
            "Task",
            (
                _p("identifier", "token", "Task.identifier"),
                _p("patient", "reference", "Task.for", targets=_PATIENT),
                _p("subject", "reference", "Task.for"),
                _p("code", "token", "Task.code"),
                _p("status", "token", "Task.status"),
                _p("business-status", "token", "Task.businessStatus"),
                _p("intent", "token", "Task.intent"),
                _p("authored-on", "date", "Task.authoredOn"),
                _p("modified", "date", "Task.lastModified"),
                _p("based-on", "reference", "Task.basedOn"),
                _p("focus", "reference", "Task.focus"),
                _p("owner", "reference", "Task.owner"),
                _p("requester", "reference", "Task.requester"),
                _p("part-of", "reference", "Task.partOf"),
                _p("priority", "token", "Task.priority"),
            ),
            statuses=_codes(
                "draft requested received accepted rejected ready cancelled in-progress on-hold failed completed "
                "entered-in-error"
            ),
        ),
        ResourceDef(
            "Device",
            (
                _p("identifier", "token", "Device.identifier"),
                _p("patient", "reference", "Device.patient", targets=_PATIENT),
                _p("type", "token", "Device.type"),
                _p("status", "token", "Device.status"),
                _p("manufacturer", "string", "Device.manufacturer"),
                _p("model", "string", "Device.modelNumber"),
                _p("device-name", "string", "Device.deviceName.name"),
            ),
            statuses=_codes("active inactive entered-in-error unknown"),
        ),
        ResourceDef(
            "Provenance",
            (
                _p("target", "reference", "Provenance.target"),
                _p("patient", "reference", "Provenance.target", targets=_PATIENT),
                _p("agent", "reference", "Provenance.agent.who"),
                _p("entity", "reference", "Provenance.entity.what"),
                _p("recorded", "date", "Provenance.recorded"),
            ),
        ),
        ResourceDef(
            "Communication",
            (
                _p("identifier", "token", "Communication.identifier"),
                _p("patient", "reference", "Communication.subject", targets=_PATIENT),
                _p("subject", "reference", "Communication.subject"),
                _p("status", "token", "Communication.status"),
                _p("category", "token", "Communication.category"),
                _p("based-on", "reference", "Communication.basedOn"),
                _p("recipient", "reference", "Communication.recipient"),
                _p("sender", "reference", "Communication.sender"),
                _p("sent", "date", "Communication.sent"),
                _p("received", "date", "Communication.received"),
            ),
            statuses=_codes("preparation in-progress not-done on-hold stopped completed entered-in-error unknown"),
        ),
        ResourceDef(
            "AuditEvent",
            (
                _p("date", "date", "AuditEvent.recorded"),
                _p("type", "token", "AuditEvent.type"),
                _p("subtype", "token", "AuditEvent.subtype"),
                _p("action", "token", "AuditEvent.action"),
                _p("outcome", "token", "AuditEvent.outcome"),
                _p("agent", "reference", "AuditEvent.agent.who"),
                _p("entity", "reference", "AuditEvent.entity.what"),
                _p("patient", "reference", "AuditEvent.entity.what", targets=_PATIENT),
            ),
            interactions=READ_ONLY,
        ),
    )
}

#: Parameters every type takes (search.html §3.1.1.1 "Parameters for all resources"); they filter on the
#: resource row itself, not on index rows.
COMMON_PARAMS: tuple[SearchParam, ...] = (
    _p("_id", "token", "Resource.id"),
    _p("_lastUpdated", "date", "Resource.meta.lastUpdated"),
)

#: Result parameters (search.html §3.1.1.5) and our own paging keys (carried in next/prev links).
RESULT_PARAMS = frozenset({"_count", "_sort", "_include", "_revinclude", "_total", "_format", "_pretty"})
PAGING_PARAMS = frozenset({"_snapshot", "_after", "_offset"})


def resource_def(type_: str) -> ResourceDef | None:
    return RESOURCES.get(type_)


def sortable(defn: ResourceDef) -> list[str]:
    """Parameters ``_sort`` accepts for a type: ``_id``, ``_lastUpdated`` and its date parameters."""
    return ["_id", "_lastUpdated"] + [p.name for p in defn.params if p.kind == "date"]
