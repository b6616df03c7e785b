"""HL7 v2 → FHIR R4: pure functions from a parsed message to a FHIR transaction Bundle (no I/O).

* ORU^R01 (HL7 v2.5.1 Ch. 7 §7.3.1): PID → Patient (conditional create), each OBR → a laboratory
  DiagnosticReport, each OBX → an Observation (LOINC when OBX-3.3 is ``LN``, UCUM quantities when OBX-6.3 is
  ``UCUM``, reference range from OBX-7, interpretation from OBX-8, status from OBX-11), NTE → notes.
* ADT^A01/A04/A08 (Ch. 3 §3.3.1, §3.3.4, §3.3.8): PID → Patient (conditional update: ADT is authoritative).
* ORM^O01 (Ch. 4 §4.4.1) and OMI^O23 (Ch. 4 §4.4.10): each ORC/OBR → ServiceRequest (``intent=order``).

Every resource is written by a conditional operation on a business identifier (FHIR R4 §3.1.0.8.1
transaction processing; §3.1.0.4.3 conditional update), so replaying a message changes nothing, and a
corrected result (OBX-11 ``C``) *replaces* the earlier Observation: an Observation's identifier is
``<filler order number>/<OBX-3 code>[/<OBX-4 sub-ID>]`` in the filler's namespace. Field readers raise the
errors of :mod:`interop.errors` with an ``SEG[n]-f`` location, which the ACK turns into ERR-2.

Identifier systems: an HL7 assigning authority / namespace ID (HD) becomes the system named for it in
``hl7.identifier_systems``, else ``urn:oid:<universal ID>`` (type ISO), else ``urn:hl7v2:<namespace ID>``.
An identifier sent with no authority at all is scoped by the sending facility (MSH-4, else MSH-3): an MRN
means nothing without the organisation that assigned it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from interop.errors import (
    InvalidInput,
    MissingMessageType,
    RequiredFieldMissing,
    SegmentError,
    TableValueNotFound,
    UnsupportedEventCode,
    UnsupportedMessageType,
    UnsupportedProcessingId,
    UnsupportedVersion,
)
from interop.hl7v2.parse import Header, Message, Segment

Resource = dict[str, Any]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

#: Coding systems of CWE/CE component 3 (HL7 table 0396) with a FHIR URI.
CODING_SYSTEMS = {"LN": LOINC, "SCT": SNOMED, "SNM": SNOMED, "UCUM": UCUM, "I10": "http://hl7.org/fhir/sid/icd-10"}

#: Message types and trigger events we process (MSH-9.1 → MSH-9.2).
SUPPORTED: dict[str, frozenset[str]] = {
    "ORU": frozenset({"R01"}),
    "ADT": frozenset({"A01", "A04", "A08"}),
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
}
PROCESSING_IDS = frozenset({"P", "D", "T"})  # HL7 table 0103

#: OBX-11 observation result status (table 0085) → Observation.status.
OBX_STATUS = {
    "C": "corrected", "D": "entered-in-error", "F": "final", "I": "registered", "N": "cancelled",
    "O": "registered", "P": "preliminary", "R": "preliminary", "S": "preliminary", "U": "final",
    "W": "entered-in-error", "X": "cancelled",
}
#: OBR-25 result status (table 0123) → DiagnosticReport.status.
OBR_STATUS = {
    "O": "registered", "I": "registered", "S": "registered", "A": "partial", "P": "preliminary",
    "C": "corrected", "R": "partial", "F": "final", "X": "cancelled", "Y": "final", "Z": "final",
}
#: ORC-5 order status (table 0038) → ServiceRequest.status.
ORC5_STATUS = {
    "A": "active", "CA": "revoked", "CM": "completed", "DC": "revoked", "ER": "entered-in-error",
    "HD": "on-hold", "IP": "active", "RP": "revoked", "SC": "active",
}
#: ORC-1 order control (table 0119) → ServiceRequest.status, where ORC-5 is empty.
ORC1_STATUS = {
    "NW": "active", "OK": "active", "SN": "active", "XO": "active", "XR": "active", "RL": "active",
    "SC": "active", "SS": "active", "CA": "revoked", "OC": "revoked", "CR": "revoked", "DC": "revoked",
    "OD": "revoked", "DR": "revoked", "HD": "on-hold", "OH": "on-hold", "HR": "on-hold", "RP": "revoked",
    "RO": "active", "RE": "completed",
}
#: PID-8 administrative sex (table 0001) → Patient.gender.
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "N": "other", "U": "unknown"}
#: OBX-8 abnormal flags (table 0078) with the v3 ObservationInterpretation code of the same name.
INTERPRETATION = {
    "L": "Low", "H": "High", "LL": "Critical low", "HH": "Critical high", "N": "Normal", "A": "Abnormal",
    "AA": "Critical abnormal", "<": "Off scale low", ">": "Off scale high", "U": "Significant change up",
    "D": "Significant change down", "B": "Better", "W": "Worse", "S": "Susceptible", "R": "Resistant",
    "I": "Intermediate", "MS": "moderately susceptible", "VS": "very susceptible", "POS": "Positive",
    "NEG": "Negative", "IND": "Indeterminate", "DET": "Detected", "ND": "Not detected", "HU": "Significantly high",
    "LU": "Significantly low", "NR": "Non-reactive", "RR": "Reactive", "QCF": "Quality control failure",
}
#: OBX-2 value types (table 0125).
VALUE_TYPES = frozenset({
    "AD", "CE", "CF", "CK", "CN", "CNE", "CP", "CWE", "CX", "DR", "DT", "DTM", "ED", "FT", "ID", "IS", "MA", "MO",
    "NA", "NM", "PN", "RP", "SN", "ST", "TM", "TN", "TS", "TX", "XAD", "XCN", "XON", "XPN", "XTN",
})

_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?\Z")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)\Z")
_RANGE = re.compile(r"\s*([+-]?\d*\.?\d+)\s*-\s*([+-]?\d*\.?\d+)\s*\Z")
_BOUND = re.compile(r"\s*(<=|>=|<|>)\s*([+-]?\d*\.?\d+)\s*\Z")


@dataclass(frozen=True)
class MappingOptions:
    """What the mapping needs beyond the message: the zone of offset-less timestamps and identifier systems."""

    tz: dt.tzinfo = dt.UTC
    identifier_systems: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Mapped:
    """The transaction Bundle for one message, and the conditional URL of each resource it writes."""

    bundle: Resource
    keys: list[str]


# -- entry point --------------------------------------------------------------------------------------------


def check_header(header: Header) -> None:
    """Refuse, before any content is read, what we do not process (§2.9.2: these are AR, not AE)."""
    if not header.message_code:
        raise MissingMessageType("MSH-9 (message type) is empty", expression="MSH[1]-9")
    events = SUPPORTED.get(header.message_code)
    if events is None:
        raise UnsupportedMessageType(
            f"message type {header.message_code} is not processed here (supported: ORU^R01, ADT^A01/A04/A08, "
            "ORM^O01, OMI^O23)", expression="MSH[1]-9.1")
    if header.trigger_event not in events:
        raise UnsupportedEventCode(
            f"trigger event {header.message_code}^{header.trigger_event or '(empty)'} is not processed here",
            expression="MSH[1]-9.2")
    if not header.control_id:
        raise RequiredFieldMissing("MSH-10 (message control ID) is empty", expression="MSH[1]-10")
    if header.processing_id and header.processing_id not in PROCESSING_IDS:
        raise UnsupportedProcessingId(f"processing ID {header.processing_id!r} is not P, D or T (table 0103)",
                                      expression="MSH[1]-11")
    if not header.version.startswith("2."):
        raise UnsupportedVersion(f"version {header.version or '(empty)'} is not an HL7 v2 version",
                                 expression="MSH[1]-12")


def to_bundle(msg: Message, options: MappingOptions) -> Mapped:
    """Map a parsed message to a FHIR transaction Bundle (raises :class:`interop.errors.InteropError`)."""
    check_header(msg.header)
    b = _Builder(msg.header, options)
    code = msg.header.message_code
    if code == "ORU":
        _map_oru(msg, b)
    elif code == "ADT":
        pid = _required_segment(msg, "PID")
        b.patient(pid, authoritative=True)
    else:
        _map_order(msg, b)
    _settle(b.entries)
    return Mapped(bundle={"resourceType": "Bundle", "type": "transaction", "entry": b.entries}, keys=b.keys)


# -- messages ------------------------------------------------------------------------------------------------


def _required_segment(msg: Message, seg_id: str) -> Segment:
    seg = msg.first(seg_id)
    if seg is None:
        raise SegmentError(f"{msg.header.message_type} has no {seg_id} segment", expression=seg_id)
    return seg


def _map_oru(msg: Message, b: _Builder) -> None:
    """ORU^R01 (§7.3.1): PATIENT_RESULT { PATIENT { PID } ORDER_OBSERVATION { [ORC] OBR [NTE] OBSERVATION
    { OBX [NTE] } } }."""
    subject = b.patient(_required_segment(msg, "PID"), authoritative=False)
    orc: Segment | None = None
    report: Resource | None = None
    order: tuple[str, str] | None = None
    obr: Segment | None = None
    last: Resource | None = None
    for seg in msg.segments:
        if seg.id == "ORC":
            orc = seg
        elif seg.id == "OBR":
            obr = seg
            report, order = b.report(seg, orc, subject)
            last, orc = report, None
        elif seg.id == "OBX":
            if report is None or order is None or obr is None:
                raise SegmentError("OBX before any OBR (ORU^R01 §7.3.1)", expression=seg.where(1))
            last = b.observation(seg, obr, order, subject, report)
        elif seg.id == "NTE" and last is not None:  # NTE-3 comment (§2.15.10)
            text = "\n".join(_c(rep, 1) for rep in seg.field(3))
            if not text:
                continue
            if last["resourceType"] == "Observation":
                last.setdefault("note", []).append({"text": text})
            else:  # DiagnosticReport has no note element: an OBR's comments are its conclusion
                last["conclusion"] = f"{last['conclusion']}\n{text}" if "conclusion" in last else text
    if report is None:
        raise SegmentError("ORU^R01 has no OBR segment", expression="OBR")


def _map_order(msg: Message, b: _Builder) -> None:
    """ORM^O01 (§4.4.1) and OMI^O23 (§4.4.10): ORDER { ORC [OBR …] [IPC …] } → ServiceRequest each."""
    subject = b.patient(_required_segment(msg, "PID"), authoritative=False)
    groups: list[dict[str, Segment]] = []
    for seg in msg.segments:
        if seg.id == "ORC":
            groups.append({"ORC": seg})
        elif seg.id in ("OBR", "TQ1", "IPC") and groups:
            groups[-1].setdefault(seg.id, seg)
        elif seg.id in ("OBR", "IPC"):
            raise SegmentError(f"{seg.id} before any ORC ({msg.header.message_type})", expression=seg.where(1))
    if not groups:
        raise SegmentError(f"{msg.header.message_type} has no ORC segment", expression="ORC")
    for g in groups:
        b.service_request(g["ORC"], g.get("OBR"), g.get("TQ1"), g.get("IPC"), subject)


# -- the builder ---------------------------------------------------------------------------------------------


class _Builder:
    """Collects transaction entries for one message."""

    def __init__(self, header: Header, options: MappingOptions) -> None:
        self.header = header
        self.options = options
        self.entries: list[Resource] = []
        self.keys: list[str] = []

    # identifiers

    def system(self, namespace: str, universal: str = "", universal_type: str = "") -> str:
        systems = self.options.identifier_systems
        if namespace and namespace in systems:
            return systems[namespace]
        if universal and universal in systems:
            return systems[universal]
        if universal and universal_type.upper() == "ISO":
            return f"urn:oid:{universal}"
        if universal and universal_type.upper() in ("URI", "URL"):
            return universal
        scope = namespace or universal or self.header.sending_facility or self.header.sending_application
        return f"urn:hl7v2:{quote(scope, safe='')}"

    def ei(self, seg: Segment, n: int, type_code: str | None = None) -> Resource | None:
        """An EI field (entity identifier: ID ^ namespace ^ universal ID ^ type, §2.A.24) as an Identifier."""
        value = seg.value(n, 1)
        if not value:
            return None
        ident: Resource = {"system": self.system(seg.value(n, 2), seg.value(n, 3), seg.value(n, 4)), "value": value}
        if type_code:
            ident["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
        return ident

    def entry(self, resource: Resource, ident: Resource, *, update: bool) -> str:
        """Add ``resource`` written conditionally on ``ident``; returns its ``urn:uuid`` reference."""
        rtype = resource["resourceType"]
        query = f"identifier={quote(ident['system'], safe=':/')}|{quote(ident['value'], safe='')}"
        key = f"{rtype}?{query}"
        full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, key)}"
        if any(e["fullUrl"] == full_url for e in self.entries):
            raise SegmentError(f"two {rtype} resources in one message share the identifier {ident['value']!r}")
        request = {"method": "PUT", "url": key} if update else {"method": "POST", "url": rtype, "ifNoneExist": query}
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})
        self.keys.append(key)
        return full_url

    # resources

    def patient(self, pid: Segment, *, authoritative: bool) -> str:
        """PID (§3.4.2) → Patient. ADT writes it (conditional update); results and orders only make sure it
        exists (conditional create), so a lab feed never overwrites registration data."""
        identifiers: list[Resource] = []
        for rep in pid.field(3):
            value = _c(rep, 1)
            if not value:
                continue
            hd = rep[3] if len(rep) > 3 else [""]
            ident: Resource = {"system": self.system(hd[0], *(hd[1:3] + ["", ""])[:2]), "value": value}
            if _c(rep, 5):
                ident["type"] = {"coding": [{"system": V2_0203, "code": _c(rep, 5)}]}
            identifiers.append(ident)
        if not identifiers:
            raise RequiredFieldMissing("PID-3 (patient identifier list) is empty", expression=pid.where(3))
        primary = next((i for i in identifiers if _type_code(i) == "MR"), identifiers[0])
        patient: Resource = {"resourceType": "Patient", "identifier": identifiers}
        names = [_human_name(rep) for rep in pid.field(5)]
        if any(names):
            patient["name"] = [n for n in names if n]
        if pid.value(7):
            patient["birthDate"] = _date(pid.value(7), pid.where(7))
        gender = _lookup(pid, 8, GENDER, "administrative sex", "0001")
        if gender:
            patient["gender"] = gender
        addresses = [_address(rep) for rep in pid.field(11)]
        if any(addresses):
            patient["address"] = [a for a in addresses if a]
        telecom = [t for n, use in ((13, "home"), (14, "work")) for rep in pid.field(n) if (t := _telecom(rep, use))]
        if telecom:
            patient["telecom"] = telecom
        if pid.value(30) == "Y":
            patient["deceasedBoolean"] = True
        if pid.value(29):
            patient["deceasedDateTime"] = self.datetime(pid.value(29), pid.where(29))
            patient.pop("deceasedBoolean", None)
        return self.entry(patient, primary, update=authoritative)

    def order_numbers(self, first: Segment, second: Segment | None) -> tuple[Resource | None, Resource | None]:
        """(placer, filler) order numbers: field 2 / field 3 of ``first`` (ORC or OBR, which use the same
        positions, §4.5.1.2-3, §4.5.3.2-3), else of ``second``."""
        placer = self.ei(first, 2, "PLAC") or (self.ei(second, 2, "PLAC") if second else None)
        filler = self.ei(first, 3, "FILL") or (self.ei(second, 3, "FILL") if second else None)
        return placer, filler

    def report(self, obr: Segment, orc: Segment | None, subject: str) -> tuple[Resource, tuple[str, str]]:
        """OBR (§4.5.3, §7.4.1) → laboratory DiagnosticReport; returns it and the order number (system,
        value) its Observations are identified under."""
        placer, filler = self.order_numbers(obr, orc)
        if filler is None and placer is None:
            raise RequiredFieldMissing("OBR-3 (filler order number) and OBR-2 (placer order number) are empty",
                                       expression=obr.where(3))
        primary = filler or placer
        assert primary is not None
        section = obr.value(24)
        report: Resource = {
            "resourceType": "DiagnosticReport",
            "identifier": [i for i in (filler, placer) if i],
            "category": [{"coding": [{"system": V2_0074, "code": section or "LAB"}]}],
            "code": self.concept(obr, 4, required=True),
            "subject": {"reference": subject},
            "result": [],
        }
        status = _lookup(obr, 25, OBR_STATUS, "result status", "0123")
        if status:
            report["status"] = status
        if obr.value(7):
            report["effectiveDateTime"] = self.datetime(obr.value(7), obr.where(7))
        if obr.value(22):
            issued = self.datetime(obr.value(22), obr.where(22))
            if "T" in issued:  # instant: needs a time
                report["issued"] = issued
        if placer is not None:
            report["basedOn"] = [{"reference": self.order(placer, filler, obr, subject, status)}]
        self.entry(report, primary, update=True)
        return report, (primary["system"], primary["value"])

    def order(self, placer: Resource, filler: Resource | None, obr: Segment, subject: str,
              result_status: str | None) -> str:
        """The ServiceRequest a result answers (§7.3.1: OBR-2 is the placer's order number): the one an
        ORM/OMI wrote under that number, or, when none came, a minimal one made from the OBR (conditional
        create on the placer number, so an order message never loses to a result message)."""
        query = f"identifier={quote(placer['system'], safe=':/')}|{quote(placer['value'], safe='')}"
        full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'ServiceRequest?{query}')}"
        if any(e["fullUrl"] == full_url for e in self.entries):
            return full_url
        sr: Resource = {
            "resourceType": "ServiceRequest",
            "identifier": [i for i in (placer, filler) if i],
            "status": "completed" if result_status == "final" else "active",
            "intent": "order",
            "code": self.concept(obr, 4, required=True),
            "subject": {"reference": subject},
        }
        return self.entry(sr, placer, update=False)

    def observation(self, obx: Segment, obr: Segment, order: tuple[str, str], subject: str,
                    report: Resource) -> Resource:
        """OBX (§7.4.2) → Observation, identified by order number, OBX-3 code and OBX-4 sub-ID."""
        code = self.concept(obx, 3, required=True)
        status_code = obx.value(11)
        if not status_code:
            raise RequiredFieldMissing("OBX-11 (observation result status) is empty", expression=obx.where(11))
        _lookup(obx, 11, OBX_STATUS, "result status", "0085")
        local = "/".join(p for p in (order[1], obx.value(3, 1), obx.value(4)) if p)
        obs: Resource = {
            "resourceType": "Observation",
            "identifier": [{"system": order[0], "value": local}],
            "status": OBX_STATUS[status_code],
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
            "code": code,
            "subject": {"reference": subject},
        }
        self.value(obx, obs)
        ranges = self.reference_range(obx)
        if ranges:
            obs["referenceRange"] = ranges
        interpretation = [_interpretation(rep) for rep in obx.field(8)]
        if interpretation:
            obs["interpretation"] = interpretation
        when = obx.value(14) or obr.value(7)
        if when:
            obs["effectiveDateTime"] = self.datetime(when, obx.where(14) if obx.value(14) else obr.where(7))
        if "basedOn" in report:
            obs["basedOn"] = report["basedOn"]
        ref = self.entry(obs, obs["identifier"][0], update=True)
        report["result"].append({"reference": ref})
        if "status" not in report:  # OBR-25 empty: the report is as final as its least final result
            report["_statuses"] = [*report.get("_statuses", []), obs["status"]]
        return obs

    def service_request(self, orc: Segment, obr: Segment | None, tq1: Segment | None, ipc: Segment | None,
                        subject: str) -> None:
        """ORC (§4.5.1) + OBR/IPC → ServiceRequest (``intent=order``), written on the placer order number."""
        placer, filler = self.order_numbers(orc, obr)
        if placer is None and filler is None:
            raise RequiredFieldMissing("ORC-2 (placer order number) and ORC-3 (filler order number) are empty",
                                       expression=orc.where(2))
        primary = placer or filler
        assert primary is not None
        # ORC-5 order status where given, else what ORC-1 order control implies.
        status = (_lookup(orc, 5, ORC5_STATUS, "order status", "0038")
                  or _lookup(orc, 1, ORC1_STATUS, "order control", "0119"))
        if status is None:
            raise RequiredFieldMissing("ORC-1 (order control) is empty", expression=orc.where(1))
        if obr is None:
            raise SegmentError("order has no OBR (the service requested, OBR-4)", expression=orc.where(1))
        identifiers = [i for i in (placer, filler) if i]
        if ipc is not None:
            accession = self.ei(ipc, 1, "ACSN")
            if accession:
                identifiers.append(accession)
        sr: Resource = {
            "resourceType": "ServiceRequest",
            "identifier": identifiers,
            "status": status,
            "intent": "order",
            "code": self.concept(obr, 4, required=True),
            "subject": {"reference": subject},
        }
        if orc.value(9):
            sr["authoredOn"] = self.datetime(orc.value(9), orc.where(9))
        if tq1 is not None and tq1.value(7):
            sr["occurrenceDateTime"] = self.datetime(tq1.value(7), tq1.where(7))
        self.entry(sr, primary, update=True)

    # data types

    def concept(self, seg: Segment, n: int, *, required: bool = False) -> Resource:
        """A CE/CWE field (§2.A.13) → CodeableConcept: the identifier triplet and the alternate one."""
        reps = seg.field(n)
        if not reps:
            if required:
                raise RequiredFieldMissing(f"{seg.id}-{n} is empty", expression=seg.where(n))
            return {}
        return _concept(reps[0])

    def datetime(self, value: str, where: str) -> str:
        """An HL7 DTM/TS (§2.A.22) → FHIR dateTime; an offset-less time is read in the configured zone."""
        m = _TS.match(value.split("^", 1)[0].strip())
        if not m:
            raise InvalidInput(f"{value!r} is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])",
                               expression=where)
        y, mo, d, h, mi, s, frac, off = m.groups()
        try:
            if h is None:
                dt.date(int(y), int(mo or 1), int(d or 1))
                return "-".join(p for p in (y, mo, d) if p)
            tz = self.options.tz
            if off:
                sign = 1 if off[0] == "+" else -1
                tz = dt.timezone(sign * dt.timedelta(hours=int(off[1:3]), minutes=int(off[3:5])))
            micro = int(round(float(frac) * 1_000_000)) if frac else 0
            stamp = dt.datetime(int(y), int(mo or 1), int(d or 1), int(h), int(mi or 0), int(s or 0), micro,
                                tzinfo=tz)
        except ValueError as exc:
            raise InvalidInput(f"{value!r} is not a valid date/time: {exc}", expression=where) from None
        return stamp.isoformat(timespec="milliseconds" if frac else "seconds")

    def value(self, obx: Segment, obs: Resource) -> None:
        """OBX-5 by its OBX-2 value type (table 0125) → Observation.value[x]."""
        vtype = obx.value(2)
        reps = obx.field(5)
        if not reps:
            return
        if vtype and vtype not in VALUE_TYPES:
            raise TableValueNotFound(f"OBX-2 value type {vtype!r} is not in HL7 table 0125", expression=obx.where(2))
        raw = obx.value(5)
        if vtype == "NM":
            obs["valueQuantity"] = self.quantity(raw, obx, obx.where(5))
        elif vtype == "SN":
            comparator, num1, sep, num2 = (_c(reps[0], i) for i in (1, 2, 3, 4))
            if sep in ("-", "") and num2:
                obs["valueRange"] = {"low": self.quantity(num1, obx, obx.where(5, 2)),
                                     "high": self.quantity(num2, obx, obx.where(5, 4))}
            elif sep in (":", "/") and num2:
                obs["valueRatio"] = {"numerator": {"value": _number(num1, obx.where(5, 2))},
                                     "denominator": {"value": _number(num2, obx.where(5, 4))}}
            else:
                q = self.quantity(num1, obx, obx.where(5, 2))
                if comparator and comparator != "=":
                    if comparator not in ("<", "<=", ">", ">="):
                        raise TableValueNotFound(f"SN comparator {comparator!r} is not one of < <= > >= =",
                                                 expression=obx.where(5, 1))
                    q = {**q, "comparator": comparator}
                obs["valueQuantity"] = q
        elif vtype in ("CE", "CWE", "CNE"):
            obs["valueCodeableConcept"] = _concept(reps[0])
        elif vtype in ("DT", "TS", "DTM"):
            obs["valueDateTime"] = self.datetime(raw, obx.where(5))
        elif vtype in ("ST", "TX", "FT", ""):
            obs["valueString"] = "\n".join(_c(rep, 1) for rep in reps)
        else:
            sep = self.header.encoding_chars[0]
            obs["valueString"] = "\n".join(sep.join(c[0] for c in rep) for rep in reps)

    def quantity(self, text: str, obx: Segment, where: str) -> Resource:
        q: Resource = {"value": _number(text, where)}
        unit_code, unit_text, unit_system = obx.value(6, 1), obx.value(6, 2), obx.value(6, 3)
        if unit_code or unit_text:
            q["unit"] = unit_text or unit_code
        if unit_code and unit_system.upper() == "UCUM":
            q["system"], q["code"] = UCUM, unit_code
        return q

    def reference_range(self, obx: Segment) -> list[Resource]:
        """OBX-7 (``3.5-5.0``, ``<5``, ``>=10`` or free text) → Observation.referenceRange."""
        text = obx.value(7)
        if not text:
            return []
        m = _RANGE.match(text)
        if m:
            return [{"low": self.quantity(m.group(1), obx, obx.where(7)),
                     "high": self.quantity(m.group(2), obx, obx.where(7)), "text": text}]
        m = _BOUND.match(text)
        if m:
            side = "high" if m.group(1).startswith("<") else "low"
            return [{side: self.quantity(m.group(2), obx, obx.where(7)), "text": text}]
        return [{"text": text}]


# -- small helpers -------------------------------------------------------------------------------------------


def _lookup(seg: Segment, n: int, table: Mapping[str, str], what: str, table_id: str) -> str | None:
    """Field ``n`` of ``seg`` through an HL7 table: its mapped value, ``None`` when the field is empty,
    :class:`TableValueNotFound` (AE, ERR-3 103) when the value is not in the table."""
    value = seg.value(n)
    if not value:
        return None
    if value not in table:
        raise TableValueNotFound(f"{seg.id}-{n} {what} {value!r} is not in HL7 table {table_id}",
                                 expression=seg.where(n))
    return table[value]


def _c(rep: list[list[str]], n: int) -> str:
    return rep[n - 1][0] if len(rep) >= n and rep[n - 1] else ""


def _type_code(ident: Resource) -> str:
    return str(ident.get("type", {}).get("coding", [{}])[0].get("code", ""))


def _coding(code: str, display: str, system: str) -> Resource | None:
    if not code:
        return None
    out: Resource = {"code": code}
    uri = CODING_SYSTEMS.get(system.upper()) if system else None
    if uri:
        out["system"] = uri
    elif system:
        out["system"] = f"urn:hl7v2:codesystem:{quote(system, safe='')}"
    if display:
        out["display"] = display
    return out


def _concept(rep: list[list[str]]) -> Resource:
    codings = [c for c in (_coding(_c(rep, 1), _c(rep, 2), _c(rep, 3)), _coding(_c(rep, 4), _c(rep, 5), _c(rep, 6)))
               if c]
    concept: Resource = {}
    if codings:
        concept["coding"] = codings
    text = _c(rep, 9) or _c(rep, 2) or _c(rep, 5)
    if text:
        concept["text"] = text
    elif not codings and _c(rep, 1):
        concept["text"] = _c(rep, 1)
    return concept


def _interpretation(rep: list[list[str]]) -> Resource:
    flag = _c(rep, 1)
    if flag in INTERPRETATION:
        return {"coding": [{"system": V3_INTERPRETATION, "code": flag, "display": INTERPRETATION[flag]}]}
    return {"text": flag}


def _number(text: str, where: str) -> int | float:
    t = text.strip()
    if not _NUMBER.match(t):
        raise InvalidInput(f"{text!r} is not a number (NM, §2.A.47)", expression=where)
    return float(t) if "." in t else int(t)


def _date(value: str, where: str) -> str:
    m = _TS.match(value.strip())
    if not m:
        raise InvalidInput(f"{value!r} is not an HL7 date (YYYY[MM[DD]])", expression=where)
    y, mo, d = m.group(1), m.group(2), m.group(3)
    try:
        dt.date(int(y), int(mo or 1), int(d or 1))
    except ValueError as exc:
        raise InvalidInput(f"{value!r} is not a valid date: {exc}", expression=where) from None
    return "-".join(p for p in (y, mo, d) if p)


def _human_name(rep: list[list[str]]) -> Resource:
    """XPN (§2.A.88): family ^ given ^ middle ^ suffix ^ prefix ^ degree ^ name type."""
    name: Resource = {}
    if _c(rep, 1):
        name["family"] = _c(rep, 1)
    given = [g for g in (_c(rep, 2), _c(rep, 3)) if g]
    if given:
        name["given"] = given
    if _c(rep, 4):
        name["suffix"] = [_c(rep, 4)]
    if _c(rep, 5):
        name["prefix"] = [_c(rep, 5)]
    use = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "anonymous"}.get(_c(rep, 7))
    if name and use:
        name["use"] = use
    return name


def _address(rep: list[list[str]]) -> Resource:
    """XAD (§2.A.85): street ^ other designation ^ city ^ state ^ postal code ^ country."""
    addr: Resource = {}
    lines = [x for x in (_c(rep, 1), _c(rep, 2)) if x]
    if lines:
        addr["line"] = lines
    for n, key in ((3, "city"), (4, "state"), (5, "postalCode"), (6, "country")):
        if _c(rep, n):
            addr[key] = _c(rep, n)
    return addr


def _telecom(rep: list[list[str]], use: str) -> Resource | None:
    """XTN (§2.A.89): number ^ use ^ equipment ^ email ^ country ^ area ^ local number."""
    email = _c(rep, 4)
    if email or _c(rep, 3).upper() == "INTERNET":
        return {"system": "email", "value": email or _c(rep, 1), "use": use} if (email or _c(rep, 1)) else None
    number = _c(rep, 1) or "".join(x for x in (_c(rep, 6), _c(rep, 7)) if x)
    if not number:
        return None
    system = {"FX": "fax", "BP": "pager"}.get(_c(rep, 3).upper(), "phone")
    return {"system": system, "value": number, "use": "mobile" if _c(rep, 3).upper() == "CP" else use}


def _settle(entries: list[Resource]) -> None:
    """What needs the whole message: a report whose OBR-25 is empty takes its status from its results
    (any not yet final: ``preliminary``; any corrected: ``corrected``; else ``final``)."""
    for entry in entries:
        res = entry["resource"]
        statuses = set(res.pop("_statuses", ()))
        if res["resourceType"] != "DiagnosticReport":
            continue
        if "status" not in res:
            live = statuses - {"cancelled", "entered-in-error"}
            if not live:
                res["status"] = "cancelled" if statuses else "registered"
            elif live & {"registered", "preliminary"}:
                res["status"] = "preliminary"
            else:
                res["status"] = "corrected" if "corrected" in live else "final"
        if not res["result"]:
            del res["result"]
