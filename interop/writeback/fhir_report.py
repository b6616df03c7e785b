"""An app result as FHIR R4 transaction Bundles for the node's own store and an EHR (IHE AI Results; FHIR R4
http.html §3.1.0.11 transactions). Pure: inputs in, a Bundle dict out; posting it is the write-back's job.

:func:`preliminary_bundle` is what a succeeded job owes: the AI result, never final (DESIGN promise 5).

- Patient, ImagingStudy, the order (ServiceRequest) and the lab Observations the model read are the node's
  own resources, copied without ``id``/``meta`` and written by **conditional create** on their business
  identifier (http.html §3.1.0.8), so a server that already has them (the node itself, or an EHR that
  registered the patient) reuses them and one that hasn't gets them: every reference in the Bundle resolves
  at any server. A reference that would only resolve at the node (to a resource not in the Bundle) is
  dropped; the ``subject`` of each copy must be the given patient (:class:`ValueError` otherwise).
- The model is one Device (identifier ``urn:interop:ai-model`` | ``<model>@<version>``, shared by every
  report of that model version); a demonstration model says so in ``Device.safety`` and ``Device.note``.
- One Observation per finding (value SNOMED CT 52101004 Present / 272519000 Absent: CID 241, what the TID 1500
  SR writes too; components: DCM 122157 Probability and the threshold, UCUM ``1``, and the AI's own decision),
  per measurement (UCUM quantity; ``bodySite`` the finding site, laterality as a SNOMED CT 272741003
  component: R4 has no laterality element on Observation) and per classification (the predicted class;
  components: each class's probability and each input's signed contribution to the predicted class's
  log-odds). Status ``preliminary``; ``device`` the model; ``derivedFrom`` the ImagingStudy or the lab
  Observations.
- The DiagnosticReport (``preliminary``; imaging: v2-0074 ``RAD``, LOINC 18748-4 "Diagnostic imaging
  study"; lab-driven: ``LAB``, LOINC 11502-2 "Laboratory report"), with the text as a ``text/plain``
  presentedForm; a demonstration model's notice is in its conclusion, its presentedForm title and each
  Observation's note (R4 DiagnosticReport has no note).
- A Provenance (target the report and its Observations, agent the model Device as ``performer`` and the app
  as ``assembler``, entity the sources with role ``source``), one ServiceRequest per recommendation
  (``proposal``/``draft``), the sign-off Task (``requested``; ``stat`` when a finding is critical) and, for
  critical findings, one Communication (category ``alert``, priority ``stat``).

:func:`signoff_bundle` turns the same result into the physician's verdict: **conditional updates**
(``PUT Type?identifier=…``, §3.1.0.10.2) of the report, its Observations, the ServiceRequests and the Task,
the shared resources again by conditional create (so the Bundle is complete at a server that never got the
preliminary one), and a Provenance of the verdict.

Exactly once. Every resource we author carries an identifier ``urn:interop:ai-result`` |
``<key>/<part>`` (see :class:`ResultIdentifiers`) and its entry's ``fullUrl`` is ``urn:uuid:`` + UUID-5 of its
conditional URL, so posting the same Bundle again creates nothing: conditional creates find what the first
post made, and a sign-off's conditional updates write the same content again. R4 Provenance has no
identifier element, so each Provenance is written by update-as-create (``PUT Provenance/<id>``,
§3.1.0.4.2) under an id derived from the key: never a second one, but a re-post stores a new, identical,
version of it (as it does of every updated resource in a resent sign-off, on a server that does not skip
no-op updates; ours doesn't).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from fhir_profiles import CANONICAL_BASE, profile_url
from operators.app_result import AppResult, Classification, Coding, Finding, Measurement

if TYPE_CHECKING:  # importing interop.recommend loads its retrieval stack (langchain, chromadb): ~1 s
    from interop.recommend.model import Recommendation

Resource = dict[str, Any]

#: Business identifiers of the resources a result makes: ``<key>/<part>`` (see :class:`ResultIdentifiers`).
IDENTIFIER_SYSTEM = "urn:interop:ai-result"
#: The model's Device: ``<model name>@<model version>``.
MODEL_SYSTEM = "urn:interop:ai-model"
#: The app (named in Provenance): ``<app name>@<app version>``.
APP_SYSTEM = "urn:interop:ai-app"
#: The signing user: the subject of their token.
USER_SYSTEM = "urn:interop:user"
#: Our own codes (``fhir_profiles/codesystems/ai-result.json``): thresholds, the AI's decision, verdicts.
CODES = f"{CANONICAL_BASE}/CodeSystem/ai-result"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
COMM_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
PROV_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
DOC_COMPLETION = "http://terminology.hl7.org/CodeSystem/v3-DocumentCompletion"

#: CID 241 "Present-Absent Only" as pydicom's ``codes.SCT.Present`` / ``codes.SCT.Absent`` (the SR's codes).
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "272519000", "display": "Absent"}
PROBABILITY = {"system": DCM, "code": "122157", "display": "Probability"}
LATERALITY = {"system": SNOMED, "code": "272741003", "display": "Laterality"}
IMAGING_REPORT = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
LAB_REPORT = {"system": LOINC, "code": "11502-2", "display": "Laboratory report"}
REFERRAL = {"system": SNOMED, "code": "3457005", "display": "Patient referral"}

Action = Literal["accept", "amend", "reject"]
_ACTIONS = ("accept", "amend", "reject")
_SIGNED = ("final", "amended")
_KEY = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


@dataclass(frozen=True)
class ReportInput:
    """Everything a result's Bundles are built from; the same values for the preliminary and the sign-off
    Bundles of one job (the sign-off rebuilds every resource in full)."""

    key: str  # the job's idempotency key (hex); all identifiers derive from it
    job_id: int
    result: AppResult
    patient: Resource  # the node's Patient (identifier[]; id/meta are stripped)
    imaging_study: Resource | None  # the node's ImagingStudy of the study (None for a lab-driven result)
    order: Resource | None  # the ServiceRequest the result answers, if known (basedOn)
    observations: list[Resource]  # lab-driven results: the Observations the model read (derivedFrom)
    recommendations: list[Recommendation]
    critical: list[str]  # names of findings above their critical threshold
    text: str  # the human-readable report text (presentedForm)
    issued: dt.datetime  # aware

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ValueError(f"key {self.key!r} is not an idempotency key ([A-Za-z0-9._-], at most 128)")
        _instant(self.issued)
        if not self.patient.get("identifier"):
            raise ValueError("the Patient has no identifier to find it by at another server")
        names = {f.name for f in self.result.findings}
        unknown = [n for n in self.critical if n not in names]
        if unknown:
            raise ValueError(f"critical names no finding of the result: {unknown}")


@dataclass(frozen=True)
class Verdict:
    """A physician's sign-off of one report."""

    action: Action
    sequence: int  # 1 for the first verdict on this report, 2 … for later ones
    reader_id: str  # the signing user's id (token subject)
    reader_name: str  # display name
    at: dt.datetime  # aware
    previous_status: str  # the DiagnosticReport's status before: preliminary | final | amended
    reason: str | None = None  # required for reject
    conclusion: str | None = None  # the physician's conclusion (amend; optional for accept)
    findings: dict[str, bool] = field(default_factory=dict)  # present/absent overrides by finding name (amend)

    def __post_init__(self) -> None:
        report_status_after(self.previous_status, self.action)
        if self.sequence < 1:
            raise ValueError("a verdict's sequence starts at 1")
        if not self.reader_id or not self.reader_name:
            raise ValueError("a verdict names its reader (id and name)")
        _instant(self.at)
        if self.action == "reject" and not (self.reason and self.reason.strip()):
            raise ValueError("a reject needs a reason")
        if self.findings and self.action != "amend":
            raise ValueError(f"finding overrides make an amend, not an {self.action}")


def report_status_after(previous_status: str, action: str) -> str:
    """The DiagnosticReport (and Observation) status after a verdict (diagnostic-report-status): accept and
    amend make ``final``, or ``amended`` when it was already signed; reject makes ``cancelled``, or
    ``entered-in-error`` when a signed report is withdrawn."""
    if action not in _ACTIONS:
        raise ValueError(f"verdict action {action!r} is not one of {', '.join(_ACTIONS)}")
    if previous_status not in ("preliminary", *_SIGNED):
        raise ValueError(f"a report in status {previous_status!r} cannot be signed (preliminary, final, amended)")
    signed = previous_status in _SIGNED
    if action == "reject":
        return "entered-in-error" if signed else "cancelled"
    return "amended" if signed else "final"


# -- identifiers --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultIdentifiers:
    """The business identifiers (system :data:`IDENTIFIER_SYSTEM`) of what one result makes, and the ids of
    its Provenances; each from the job's key alone, so every post of a result names the same resources."""

    key: str

    def of(self, *parts: object) -> Resource:
        return {"system": IDENTIFIER_SYSTEM, "value": "/".join([self.key, *map(str, parts)])}

    @property
    def report(self) -> Resource:
        return self.of("report")

    @property
    def task(self) -> Resource:
        return self.of("task")

    @property
    def communication(self) -> Resource:
        return self.of("communication")

    def finding(self, name: str) -> Resource:
        return self.of("finding", name)

    def measurement(self, index: int) -> Resource:
        return self.of("measurement", index)

    def classification(self, name: str) -> Resource:
        return self.of("classification", name)

    def recommendation(self, snippet_id: str) -> Resource:
        return self.of("recommendation", snippet_id)

    @property
    def provenance_id(self) -> str:
        """Id of the result's Provenance (R4 Provenance has no identifier: written by PUT to this id)."""
        return _uuid(f"{IDENTIFIER_SYSTEM}|{self.key}/provenance")

    def verdict_provenance_id(self, sequence: int) -> str:
        return _uuid(f"{IDENTIFIER_SYSTEM}|{self.key}/verdict/{sequence}")


def identifiers(key: str) -> ResultIdentifiers:
    return ResultIdentifiers(key)


def model_identifier(result: AppResult) -> Resource:
    """The model Device's identifier: shared by every result of that model version."""
    return {"system": MODEL_SYSTEM, "value": f"{result.model.name}@{result.model.version}"}


def search_query(ident: Resource) -> str:
    """``identifier=<system>|<value>`` (URL-encoded) for a conditional create, update or search."""
    value = quote(str(ident["value"]), safe="")
    if ident.get("system"):
        return f"identifier={quote(str(ident['system']), safe=':/')}|{value}"
    return f"identifier={value}"


def report_url(key: str) -> str:
    """The conditional URL of a result's DiagnosticReport, e.g. to read it back: ``DiagnosticReport?…``."""
    return f"DiagnosticReport?{search_query(identifiers(key).report)}"


def _uuid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def _full_url(type_: str, ident: Resource) -> str:
    """``urn:uuid:`` + UUID-5 of the conditional URL (the HL7 v2 mapping names its entries the same way)."""
    return f"urn:uuid:{_uuid(f'{type_}?{search_query(ident)}')}"


# -- small builders -----------------------------------------------------------------------------------------


def _instant(ts: dt.datetime) -> str:
    """A FHIR instant in UTC with milliseconds; a naive time is refused (no zone, no instant)."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{ts!r} has no time zone")
    return ts.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _coding(c: Coding | dict[str, str]) -> Resource:
    return c.model_dump() if isinstance(c, Coding) else dict(c)


def _concept(c: Coding | dict[str, str], text: str | None = None) -> Resource:
    out: Resource = {"coding": [_coding(c)]}
    if text:
        out["text"] = text
    return out


def _own(code: str, display: str, text: str | None = None) -> Resource:
    return _concept({"system": CODES, "code": code, "display": display}, text)


def _ref(full_url: str, type_: str, display: str | None = None) -> Resource:
    out: Resource = {"reference": full_url, "type": type_}
    if display:
        out["display"] = display
    return out


def _presence(present: bool) -> Resource:
    return _concept(PRESENT if present else ABSENT)


def _probability(p: float) -> Resource:
    return {"value": round(float(p), 6), "unit": "probability", "system": UCUM, "code": "1"}


def _yes_no(present: bool) -> str:
    return "Present" if present else "Absent"


def _display(c: Coding) -> str:
    return c.display or c.code


def _portable(node: Any, refs: dict[str, str]) -> Any:
    """A copy of ``node`` whose relative references (``Type/id[/_history/n]``) to a resource in the Bundle
    point at its entry, and whose other relative references, which would dangle at another server, are
    dropped (their display kept where there is one)."""
    if isinstance(node, list):
        items = [_portable(v, refs) for v in node]
        return [v for v in items if v not in (None, {}, [])]
    if not isinstance(node, dict):
        return node
    out: Resource = {}
    for k, v in node.items():
        if k == "reference" and isinstance(v, str) and (m := _RELATIVE.match(v)):
            target = refs.get(f"{m.group(1)}/{m.group(2)}")
            if target is None:
                rest = {kk: _portable(vv, refs) for kk, vv in node.items() if kk in ("display", "identifier")}
                return rest or None
            out[k] = target
            out.setdefault("type", m.group(1))
            continue
        item = _portable(v, refs)
        if item not in (None, {}, []):
            out[k] = item
    return out


def _preferred(idents: list[Resource], type_code: str) -> Resource:
    """The identifier of v2-0203 type ``type_code`` (MR, PLAC …) if there is one, else the first."""
    return next((i for i in idents if any(c.get("code") == type_code
                                          for c in (i.get("type") or {}).get("coding", []))), idents[0])


def _attachment(text: str, title: str, created: str) -> Resource:
    return {"contentType": "text/plain; charset=utf-8", "language": "en",
            "data": base64.b64encode(text.encode("utf-8")).decode("ascii"), "title": title, "creation": created}


def _entry(full_url: str, resource: Resource, request: Resource) -> Resource:
    return {"fullUrl": full_url, "resource": resource, "request": request}


def _create(type_: str, resource: Resource, ident: Resource) -> Resource:
    """A conditional create entry (http.html §3.1.0.8)."""
    return _entry(_full_url(type_, ident), resource,
                  {"method": "POST", "url": type_, "ifNoneExist": search_query(ident)})


def _update(type_: str, resource: Resource, ident: Resource) -> Resource:
    """A conditional update entry (http.html §3.1.0.10.2), under the same fullUrl as its create."""
    return _entry(_full_url(type_, ident), resource, {"method": "PUT", "url": f"{type_}?{search_query(ident)}"})


def _put(type_: str, id_: str, resource: Resource) -> Resource:
    """An update-as-create entry with a client id (http.html §3.1.0.4.2)."""
    return _entry(f"urn:uuid:{id_}", {**resource, "id": id_}, {"method": "PUT", "url": f"{type_}/{id_}"})


def _bundle(entries: list[Resource]) -> Resource:
    """The transaction Bundle; its own copy of everything (the builders share references between
    resources), and never two entries for one conditional URL."""
    seen: set[str] = set()
    for e in entries:
        if e["fullUrl"] in seen:
            raise ValueError(f"two entries of the Bundle share {e['request'].get('url')} "
                             f"({e['request'].get('ifNoneExist', '')}): their identifiers must differ")
        seen.add(e["fullUrl"])
    return {"resourceType": "Bundle", "type": "transaction", "entry": copy.deepcopy(entries)}


# -- the result's resources ---------------------------------------------------------------------------------


@dataclass
class _Obs:
    """One AI Observation as built for the preliminary report, and what a verdict needs to change it."""

    resource: Resource
    ident: Resource
    full_url: str
    finding: Finding | None = None


@dataclass
class _Request:
    resource: Resource
    ident: Resource
    findings: list[str]


class _Result:
    """The resources of one result, preliminary, with their references resolved to Bundle entries."""

    def __init__(self, inp: ReportInput) -> None:
        self.inp = inp
        self.ids = identifiers(inp.key)
        self.result = inp.result
        self.issued = _instant(inp.issued)
        self.imaging = inp.imaging_study is not None
        if not self.imaging and self.result.inputs.study_instance_uid:
            raise ValueError("an imaging result needs the ImagingStudy of its study")
        self.notice = self.result.notice or (self.result.model.notice if self.result.model.demonstration else None)
        self.shared: list[Resource] = []
        self.refs: dict[str, str] = {}
        self.patient = self._patient()
        self.device = self._device()
        self.order = self._order()
        self.study = self._imaging_study()
        self.sources = self._lab_observations()
        self._settle_copies()
        self.observations = self._observations()
        self.report_url = _full_url("DiagnosticReport", self.ids.report)
        self.report = self._report()
        self.requests = self._requests()
        self.task = self._task()

    # the node's resources, copied ---------------------------------------------------------------------------

    def _local(self, resource: Resource, type_: str, full_url: str) -> None:
        if resource.get("id"):
            self.refs[f"{type_}/{resource['id']}"] = full_url

    def _subject(self, resource: Resource, what: str) -> None:
        """The copy's subject must be our patient (a wrong-patient result is the one thing never to write)."""
        ref = (resource.get("subject") or {}).get("reference")
        pid = self.inp.patient.get("id")
        m = _RELATIVE.match(ref) if isinstance(ref, str) else None
        if m and (m.group(1) != "Patient" or (pid and m.group(2) != pid)):
            raise ValueError(f"the {what}'s subject {ref} is not the result's patient Patient/{pid}")

    def _patient(self) -> Resource:
        p = self.inp.patient
        body: Resource = {"resourceType": "Patient"}
        body.update((k, p[k]) for k in ("identifier", "name", "birthDate", "gender") if k in p)
        entry = _create("Patient", body, _preferred(p["identifier"], "MR"))
        self.shared.append(entry)
        self._local(p, "Patient", entry["fullUrl"])
        return _ref(entry["fullUrl"], "Patient")

    def _device(self) -> Resource:
        model = self.result.model
        device: Resource = {
            "resourceType": "Device",
            "identifier": [model_identifier(self.result)],
            "status": "active",
            "manufacturer": "interop",
            "deviceName": [{"name": model.name, "type": "model-name"}],
            "type": {"text": "AI inference model (software)"},
            "version": [{"value": model.version}],
        }
        if model.sha256:
            device["version"].append({"type": {"text": "sha256 of the model file"}, "value": model.sha256})
        if model.demonstration:
            notice = model.notice or "demonstration model, not for clinical use"
            device["safety"] = [{"text": notice}]
            device["note"] = [{"text": notice}]
        entry = _create("Device", device, model_identifier(self.result))
        self.shared.append(entry)
        return _ref(entry["fullUrl"], "Device", f"{model.name} {model.version}")

    def _copy(self, resource: Resource, type_: str, ident: Resource, what: str) -> Resource:
        self._subject(resource, what)
        body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
        body["resourceType"] = type_
        entry = _create(type_, body, ident)
        self._local(resource, type_, entry["fullUrl"])
        self.shared.append(entry)
        return entry

    def _order(self) -> Resource | None:
        order = self.inp.order
        if order is None:
            return None
        idents = order.get("identifier") or []
        if not idents:
            raise ValueError("the order ServiceRequest has no identifier to find it by at another server")
        entry = self._copy(order, "ServiceRequest", _preferred(idents, "PLAC"), "order")
        return _ref(entry["fullUrl"], "ServiceRequest")

    def _imaging_study(self) -> Resource | None:
        study = self.inp.imaging_study
        if study is None:
            return None
        ident = next((i for i in study.get("identifier") or [] if i.get("system") == "urn:dicom:uid"), None)
        if ident is None:
            raise ValueError("the ImagingStudy has no urn:dicom:uid identifier (its Study Instance UID)")
        entry = self._copy(study, "ImagingStudy", ident, "ImagingStudy")
        return _ref(entry["fullUrl"], "ImagingStudy")

    def _lab_observations(self) -> list[Resource]:
        """References to the Observations read: their entries (conditional create on their identifier); one
        with no identifier can't be found at another server and is named by display only."""
        out: list[Resource] = []
        for obs in self.inp.observations:
            ident = (obs.get("identifier") or [None])[0]
            if ident is None:
                code = obs.get("code") or {}
                label = code.get("text") or next((c.get("display") or c.get("code") for c in code.get("coding", [])),
                                                 "Observation")
                out.append({"type": "Observation", "display": f"{label} ({obs.get('effectiveDateTime', 'undated')})"})
                continue
            entry = self._copy(obs, "Observation", ident, "Observation")
            out.append(_ref(entry["fullUrl"], "Observation"))
        return out

    def _settle_copies(self) -> None:
        """The copies' own references (a lab result basedOn the order …) now that every local id is known;
        their subject (checked to be our patient) is the Patient's entry."""
        for entry in self.shared:
            entry["resource"] = _portable(entry["resource"], self.refs)
            if entry["resource"]["resourceType"] not in ("Patient", "Device"):
                entry["resource"]["subject"] = self.patient

    # the AI's resources -------------------------------------------------------------------------------------

    @property
    def _derived_from(self) -> list[Resource]:
        return ([self.study] if self.study else []) + self.sources

    def _observation(self, ident: Resource, code: Resource) -> Resource:
        obs: Resource = {
            "resourceType": "Observation",
            "meta": {"profile": [profile_url("ai-observation" if self.imaging else "ai-lab-observation")]},
            "identifier": [ident],
            "status": "preliminary",
            "category": [_concept({"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}
                                  if self.imaging else
                                  {"system": OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"})],
            "code": code,
            "subject": self.patient,
            "issued": self.issued,
            "device": self.device,
        }
        if self.order:
            obs["basedOn"] = [self.order]
        if self._derived_from:
            obs["derivedFrom"] = self._derived_from
        if self.notice:
            obs["note"] = [{"text": self.notice}]
        return obs

    def _finding(self, f: Finding) -> _Obs:
        ident = self.ids.finding(f.name)
        obs = self._observation(ident, _concept(f.code, _display(f.code)))
        obs["valueCodeableConcept"] = _presence(f.present)
        obs["component"] = [
            {"code": _concept(PROBABILITY), "valueQuantity": _probability(f.probability)},
            {"code": _own("threshold", "Decision threshold"), "valueQuantity": _probability(f.threshold)},
            {"code": _own("ai-decision", "AI decision"), "valueCodeableConcept": _presence(f.present)},
        ]
        return _Obs(obs, ident, _full_url("Observation", ident), f)

    def _measurement(self, i: int, m: Measurement) -> _Obs:
        ident = self.ids.measurement(i)
        obs = self._observation(ident, _concept(m.code, m.name))
        obs["valueQuantity"] = {"value": m.value, "unit": m.unit, "system": UCUM, "code": m.unit}
        if m.finding_site is not None:
            side = f"{_display(m.laterality)} " if m.laterality else ""
            obs["bodySite"] = _concept(m.finding_site, f"{side}{_display(m.finding_site)}".strip())
        if m.laterality is not None:
            obs["component"] = [{"code": _concept(LATERALITY), "valueCodeableConcept": _concept(m.laterality)}]
        return _Obs(obs, ident, _full_url("Observation", ident))

    def _classification(self, c: Classification) -> _Obs:
        ident = self.ids.classification(c.name)
        obs = self._observation(ident, _concept(c.code, _display(c.code)))
        obs["valueCodeableConcept"] = {"text": c.predicted}
        components = [{"code": _own("class-probability", "Class probability", f"probability of {label}"),
                       "valueQuantity": _probability(p)} for label, p in c.probabilities.items()]
        for k in c.contributions:
            value = "missing, imputed" if k.value is None else k.value
            components.append({"code": _own("contribution", "Contribution", f"{k.feature} (input: {value})"),
                               "valueQuantity": {"value": round(k.contribution, 6), "unit": "log-odds"}})
        obs["component"] = components
        if c.contributions:
            obs.setdefault("note", []).append({"text": (
                f"Contributions: each input's signed effect on the log-odds of the predicted class {c.predicted}.")})
        return _Obs(obs, ident, _full_url("Observation", ident))

    def _observations(self) -> list[_Obs]:
        out = [self._finding(f) for f in self.result.findings]
        out += [self._measurement(i, m) for i, m in enumerate(self.result.measurements)]
        out += [self._classification(c) for c in self.result.classifications]
        return out

    def conclusion(self, present: list[Finding], prefix: str) -> str:
        r = self.result
        parts = []
        if r.findings:
            parts.append("present: " + ", ".join(f"{_display(f.code)} (p={f.probability:.2f})" for f in present)
                         if present else "no finding above its threshold")
        parts += [f"{_display(c.code)}: {c.predicted} (p={c.probabilities[c.predicted]:.2f})"
                  for c in r.classifications]
        if r.measurements:
            parts.append(f"{len(r.measurements)} measurement{'s' if len(r.measurements) != 1 else ''}")
        text = f"{prefix}: {'; '.join(parts) or 'no result'}."
        return f"{text} {self.notice[:1].upper()}{self.notice[1:]}." if self.notice else text

    @property
    def title(self) -> str:
        r = self.result
        title = f"AI result of {r.app.name} {r.app.version} (model {r.model.name} {r.model.version})"
        return f"{title}, {self.notice}" if self.notice else title

    def _report(self) -> Resource:
        present = [f for f in self.result.findings if f.present]
        report: Resource = {
            "resourceType": "DiagnosticReport",
            "meta": {"profile": [profile_url("ai-diagnostic-report" if self.imaging else "ai-lab-report")]},
            "identifier": [self.ids.report],
            "status": "preliminary",
            "category": [_concept({"system": V2_0074, "code": "RAD", "display": "Radiology"} if self.imaging
                                  else {"system": V2_0074, "code": "LAB", "display": "Laboratory"})],
            "code": _concept(IMAGING_REPORT if self.imaging else LAB_REPORT),
            "subject": self.patient,
            "issued": self.issued,
            "performer": [self.device],
            "result": [_ref(o.full_url, "Observation") for o in self.observations],
            "conclusion": self.conclusion(present, "AI result, awaiting physician sign-off"),
            "presentedForm": [_attachment(self.inp.text, self.title, self.issued)],
        }
        if self.order:
            report["basedOn"] = [self.order]
        if self.study:
            report["imagingStudy"] = [self.study]
        if present:
            report["conclusionCode"] = [_concept(f.code) for f in present]
        if not report["result"]:
            del report["result"]
        return report

    def _requests(self) -> list[_Request]:
        """One proposal per distinct knowledge-base snippet (its identifier), answering every finding that
        retrieved it."""
        by_name = {o.finding.name: o.full_url for o in self.observations if o.finding}
        by_name |= {c.name: _full_url("Observation", self.ids.classification(c.name))
                    for c in self.result.classifications}
        out: dict[str, _Request] = {}
        for rec in self.inp.recommendations:
            # a finding's name, or a classification's ``name=class`` (the knowledge base's target keys)
            target = by_name.get(rec.finding) or by_name.get(rec.finding.partition("=")[0])
            reason = _ref(target, "Observation") if target else _ref(self.report_url, "DiagnosticReport")
            if rec.snippet_id in out:
                request = out[rec.snippet_id]
                if reason not in request.resource["reasonReference"]:
                    request.resource["reasonReference"].append(reason)
                request.findings.append(rec.finding)
                continue
            ident = self.ids.recommendation(rec.snippet_id)
            sr: Resource = {
                "resourceType": "ServiceRequest",
                "meta": {"profile": [profile_url("ai-recommendation")]},
                "identifier": [ident],
                "status": "draft",
                "intent": "proposal",
                "priority": "routine",
                "code": _concept(rec.code, rec.code.display),
                "subject": self.patient,
                "authoredOn": self.issued,
                "requester": self.device,
                "reasonReference": [reason],
                "supportingInfo": [_ref(self.report_url, "DiagnosticReport")],
                "note": [{"text": rec.text}, {"text": f"Source: {rec.source} ({rec.snippet_id})"}],
            }
            if rec.kind == "referral":
                sr["category"] = [_concept(REFERRAL)]
            if self.notice:
                sr["note"].append({"text": f"Proposed from the result of a {self.notice}."})
            out[rec.snippet_id] = _Request(sr, ident, [rec.finding])
        return list(out.values())

    def _task(self) -> Resource:
        r = self.result
        task: Resource = {
            "resourceType": "Task",
            "identifier": [self.ids.task],
            "status": "requested",
            "businessStatus": _own("awaiting-signoff", "Awaiting sign-off"),
            "intent": "order",
            "priority": "stat" if self.inp.critical else "routine",
            "code": _concept({"system": TASK_CODE, "code": "approve",
                              "display": "Activate/approve the focal resource"}),
            "description": (f"Review and sign off the AI result of {r.app.name} {r.app.version} "
                            f"(model {r.model.name} {r.model.version}, job {self.inp.job_id})"
                            + (f"; critical: {', '.join(self.inp.critical)}" if self.inp.critical else "")),
            "focus": _ref(self.report_url, "DiagnosticReport"),
            "for": self.patient,
            "authoredOn": self.issued,
            "lastModified": self.issued,
            "requester": self.device,
        }
        if self.order:
            task["basedOn"] = [self.order]
        return task

    @property
    def targets(self) -> list[Resource]:
        """What a Provenance is about: the report and its Observations."""
        return [_ref(self.report_url, "DiagnosticReport")] + [_ref(o.full_url, "Observation")
                                                             for o in self.observations]

    def provenance(self) -> Resource:
        r = self.result
        prov: Resource = {
            "resourceType": "Provenance",
            "target": self.targets,
            "recorded": self.issued,
            "activity": _concept({"system": DATA_OPERATION, "code": "CREATE", "display": "create"}),
            "agent": [
                {"type": _concept({"system": PROV_AGENT, "code": "performer", "display": "Performer"}),
                 "who": self.device},
                {"type": _concept({"system": PROV_AGENT, "code": "assembler", "display": "Assembler"}),
                 "who": {"identifier": {"system": APP_SYSTEM, "value": f"{r.app.name}@{r.app.version}"},
                         "display": f"app {r.app.name} {r.app.version}"}},
            ],
        }
        if self._derived_from:
            prov["entity"] = [{"role": "source", "what": w} for w in self._derived_from]
        return prov

    def communication(self) -> Resource | None:
        if not self.inp.critical:
            return None
        by_name = {o.finding.name: o for o in self.observations if o.finding}
        critical = [by_name[n] for n in self.inp.critical]
        named = ", ".join(f"{_display(o.finding.code)} (p={o.finding.probability:.2f}, "
                          f"threshold {o.finding.threshold:.2f})" for o in critical if o.finding)
        text = f"Critical AI finding, awaiting physician sign-off: {named}."
        if self.notice:
            text += f" {self.notice[:1].upper()}{self.notice[1:]}."
        return {
            "resourceType": "Communication",
            "identifier": [self.ids.communication],
            "status": "completed",
            "category": [_concept({"system": COMM_CATEGORY, "code": "alert", "display": "Alert"})],
            "priority": "stat",
            "subject": self.patient,
            "about": [_ref(self.report_url, "DiagnosticReport")] + [_ref(o.full_url, "Observation") for o in critical],
            "sent": self.issued,
            "sender": self.device,
            "payload": [{"contentString": text}],
        }


# -- the Bundles --------------------------------------------------------------------------------------------


def preliminary_bundle(inp: ReportInput) -> Resource:
    """The transaction Bundle of an AI result awaiting sign-off: every entry a conditional create (the
    Provenance an update-as-create under an id from the key), so posting it again creates nothing."""
    r = _Result(inp)
    entries = list(r.shared)
    entries += [_create("Observation", o.resource, o.ident) for o in r.observations]
    entries.append(_create("DiagnosticReport", r.report, r.ids.report))
    entries += [_create("ServiceRequest", q.resource, q.ident) for q in r.requests]
    entries.append(_create("Task", r.task, r.ids.task))
    if (comm := r.communication()) is not None:
        entries.append(_create("Communication", comm, r.ids.communication))
    entries.append(_put("Provenance", r.ids.provenance_id, r.provenance()))
    return _bundle(entries)


def signoff_bundle(inp: ReportInput, verdict: Verdict) -> Resource:
    """The transaction Bundle of a physician's verdict on the result: conditional updates of the report, its
    Observations, the proposals and the Task with their full new content, the shared resources by
    conditional create again (so it is complete at a server that never got the preliminary Bundle), and the
    verdict's Provenance (update-as-create under an id from the key and ``verdict.sequence``). Resending it
    stores identical versions and changes nothing else.

    - report and Observations: :func:`report_status_after`; the reader as ``resultsInterpreter``; the
      physician's conclusion (else one from the findings as signed); presentedForm keeps the AI's text and
      adds the sign-off (with the AI's conclusion); a finding the physician overrode carries the physician's
      value, while the AI's own decision, probability and threshold stay in its components and a note says
      "Physician: Absent; AI: Present (probability …, threshold …)";
    - proposals: ``active`` (accept, amend) or ``revoked`` (reject, or an amend that finds every finding a
      proposal answers absent), claiming ``ai-recommendation-reviewed`` instead of the draft-only profile;
    - Task: ``completed``, the verdict (and reason) as businessStatus and output, the reader as owner;
    - Provenance: target the report and its Observations, agent the reader as ``verifier``, activity
      v3-DocumentCompletion ``LA`` (accept, amend) or v3-DataOperation ``ABORT`` / ``NULLIFY`` (reject of a
      preliminary / a signed report), the reason."""
    s = _Signoff(_Result(inp), verdict)
    entries = list(s.r.shared)
    entries += [_update("Observation", s.observation(o), o.ident) for o in s.r.observations]
    entries.append(_update("DiagnosticReport", s.report(), s.r.ids.report))
    entries += [_update("ServiceRequest", s.request(q), q.ident) for q in s.r.requests]
    entries.append(_update("Task", s.task(), s.r.ids.task))
    entries.append(_put("Provenance", s.r.ids.verdict_provenance_id(verdict.sequence), s.provenance()))
    return _bundle(entries)


class _Signoff:
    """A result's resources as a verdict leaves them."""

    def __init__(self, r: _Result, verdict: Verdict) -> None:
        unknown = sorted(set(verdict.findings) - {f.name for f in r.result.findings})
        if unknown:
            raise ValueError(f"the verdict overrides findings the result does not have: {unknown}")
        self.r, self.v = r, verdict
        self.status = report_status_after(verdict.previous_status, verdict.action)
        self.reject = verdict.action == "reject"
        self.at = _instant(verdict.at)
        self.reader = {"type": "Practitioner", "identifier": {"system": USER_SYSTEM, "value": verdict.reader_id},
                       "display": verdict.reader_name}
        self.done = {"accept": "Accepted", "amend": "Amended", "reject": "Rejected"}[verdict.action]
        self.signed = f"{self.done} by {verdict.reader_name} at {self.at}"
        #: Each finding's presence as signed: the physician's where given, else the AI's.
        self.decided = {f.name: verdict.findings.get(f.name, f.present) for f in r.result.findings}

    def _note(self, text: str) -> Resource:
        return {"authorReference": self.reader, "time": self.at, "text": text}

    def observation(self, o: _Obs) -> Resource:
        obs = {**o.resource, "status": self.status}
        notes = list(obs.get("note", []))
        f = o.finding
        if f is not None and self.decided[f.name] != f.present:
            obs["valueCodeableConcept"] = _presence(self.decided[f.name])
            notes.append(self._note(f"Physician: {_yes_no(self.decided[f.name])}; AI: {_yes_no(f.present)} "
                                    f"(probability {f.probability:.2f}, threshold {f.threshold:.2f})"))
        if self.reject:
            notes.append(self._note(f"{self.signed}: {self.v.reason}"))
        if notes:
            obs["note"] = notes
        return obs

    def report(self) -> Resource:
        r, v = self.r, self.v
        report = {**r.report, "status": self.status, "resultsInterpreter": [self.reader]}
        present = [f for f in r.result.findings if self.decided[f.name]]
        if v.conclusion:
            report["conclusion"] = v.conclusion
        elif self.reject:
            report["conclusion"] = f"{self.signed}: {v.reason}"
        else:
            report["conclusion"] = r.conclusion(present, f"AI result {self.done.lower()} by {v.reader_name}")
        report.pop("conclusionCode", None)
        if present and not self.reject:
            report["conclusionCode"] = [_concept(f.code) for f in present]
        lines = [f"{self.signed} (sign-off {v.sequence}; report status {v.previous_status} -> {self.status})."]
        if v.reason:
            lines.append(f"Reason: {v.reason}")
        if v.conclusion:
            lines.append(f"Physician's conclusion: {v.conclusion}")
        lines += [f"Finding {f.name}: physician {_yes_no(self.decided[f.name])}, AI {_yes_no(f.present)}"
                  for f in r.result.findings if self.decided[f.name] != f.present]
        lines.append(f"AI conclusion: {r.report['conclusion']}")
        report["presentedForm"] = [*r.report["presentedForm"], _attachment(
            "\n".join(lines) + "\n", f"Physician sign-off: {self.signed}", self.at)]
        return report

    def request(self, q: _Request) -> Resource:
        # revoked when rejected, or when every finding it answers was found absent
        revoke = self.reject or not any(self.decided.get(n, True) for n in q.findings)
        why = self.v.reason if self.reject else ("the findings it answers were found absent" if revoke else None)
        text = f"{'Revoked' if revoke else 'Activated'}: {self.signed}" + (f": {why}" if why else "")
        return {**q.resource, "status": "revoked" if revoke else "active",
                "meta": {"profile": [profile_url("ai-recommendation-reviewed")]},
                "note": [*q.resource["note"], self._note(text)]}

    def task(self) -> Resource:
        output: list[Resource] = [
            {"type": _own("verdict", "Verdict"), "valueCodeableConcept": _own(self.v.action, self.done)}]
        if self.v.reason:
            output.append({"type": _own("reason", "Reason"), "valueString": self.v.reason})
        output.append({"type": _own("signed-report", "Signed report"),
                       "valueReference": _ref(self.r.report_url, "DiagnosticReport")})
        return {**self.r.task, "status": "completed", "businessStatus": _own(self.v.action, self.done, self.signed),
                "owner": self.reader, "executionPeriod": {"end": self.at}, "lastModified": self.at,
                "output": output}

    def provenance(self) -> Resource:
        if not self.reject:
            activity = _concept({"system": DOC_COMPLETION, "code": "LA", "display": "legally authenticated"})
        elif self.status == "entered-in-error":
            activity = _concept({"system": DATA_OPERATION, "code": "NULLIFY", "display": "nullify"})
        else:
            activity = _concept({"system": DATA_OPERATION, "code": "ABORT", "display": "abort"})
        activity["text"] = self.v.action
        prov: Resource = {
            "resourceType": "Provenance",
            "target": self.r.targets,
            "recorded": self.at,
            "activity": activity,
            "agent": [{"type": _concept({"system": PROV_AGENT, "code": "verifier", "display": "Verifier"}),
                       "who": self.reader}],
        }
        if self.v.reason:
            prov["reason"] = [{"text": self.v.reason}]
        return prov


__all__ = [
    "APP_SYSTEM", "CODES", "IDENTIFIER_SYSTEM", "MODEL_SYSTEM", "USER_SYSTEM", "ReportInput", "ResultIdentifiers",
    "Verdict", "identifiers", "model_identifier", "preliminary_bundle", "report_status_after", "report_url",
    "search_query", "signoff_bundle",
]
