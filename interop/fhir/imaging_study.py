"""ImagingStudy kept in step with the DICOM store (FHIR R4 imagingstudy.html; DICOM PS3.18 §F / the
ImagingStudy mapping of IHE MHD/IMR).

When a study becomes ready (and again each time it becomes ready after new instances), one transaction
Bundle makes sure the Patient exists (conditional create on the DICOM Patient ID, so a patient the EHR
already registered is reused, never overwritten) and writes the ImagingStudy by conditional update on its
Study Instance UID identifier (``urn:dicom:uid`` | ``urn:oid:<uid>``): one resource per study, a new version
each time its content changes.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from interop.fhir.store import FhirStore
from interop.store.db import Database
from interop.store.models import Instance, Series, Study

log = logging.getLogger(__name__)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
SEX = {"M": "male", "F": "female", "O": "other"}


@dataclass
class InstanceRow:
    sop_uid: str
    sop_class_uid: str
    number: int | None


@dataclass
class SeriesRow:
    series_uid: str
    modality: str | None
    number: int | None
    description: str | None
    body_part: str | None
    started: str | None  # DICOM DA+TM
    instances: list[InstanceRow] = field(default_factory=list)


@dataclass
class StudyRow:
    study_uid: str
    patient_id: str | None
    patient_name: str | None
    birth_date: str | None
    sex: str | None
    date: str | None
    time: str | None
    accession: str | None
    description: str | None
    series: list[SeriesRow] = field(default_factory=list)


def dicom_date(date: str | None) -> str | None:
    """DA (YYYYMMDD) → FHIR date. The Study Time is left out: a FHIR dateTime with a time needs a zone, and
    the index keeps none (Timezone Offset From UTC (0008,0201) is rarely sent), so the date alone is honest."""
    if not date or len(date) < 8 or not date[:8].isdigit():
        return None
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}"


def human_name(pn: str | None) -> list[dict[str, Any]]:
    """PS3.5 PN (family^given^middle^prefix^suffix, first component group) → FHIR HumanName."""
    if not pn:
        return []
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    name: dict[str, Any] = {}
    if parts[0]:
        name["family"] = parts[0]
    given = [p for p in (parts[1], parts[2]) if p]
    if given:
        name["given"] = given
    if parts[3]:
        name["prefix"] = [parts[3]]
    if parts[4]:
        name["suffix"] = [parts[4]]
    return [name] if name else []


def imaging_study_bundle(study: StudyRow, patient_system: str) -> dict[str, Any]:
    """The transaction Bundle: Patient (conditional create) + ImagingStudy (conditional update)."""
    patient_url = "urn:uuid:patient"
    entries: list[dict[str, Any]] = []
    subject: dict[str, Any]
    if study.patient_id:
        patient: dict[str, Any] = {"resourceType": "Patient",
                                   "identifier": [{"system": patient_system, "value": study.patient_id}]}
        if names := human_name(study.patient_name):
            patient["name"] = names
        if study.birth_date and len(study.birth_date) == 8 and study.birth_date.isdigit():
            patient["birthDate"] = f"{study.birth_date[:4]}-{study.birth_date[4:6]}-{study.birth_date[6:]}"
        if study.sex in SEX:
            patient["gender"] = SEX[study.sex]
        entries.append({"fullUrl": patient_url, "resource": patient,
                        "request": {"method": "POST", "url": "Patient",
                                    "ifNoneExist": f"identifier={study.patient_id}"}})
        subject = {"reference": patient_url}
    else:
        subject = {"display": "patient not identified in the DICOM data (no Patient ID)"}
    series_out: list[dict[str, Any]] = []
    modalities: list[str] = []
    for s in sorted(study.series, key=lambda s: (s.number is None, s.number or 0, s.series_uid)):
        item: dict[str, Any] = {"uid": s.series_uid, "numberOfInstances": len(s.instances)}
        if s.number is not None:
            item["number"] = s.number
        if s.modality:
            item["modality"] = {"system": DCM, "code": s.modality}
            if s.modality not in modalities:
                modalities.append(s.modality)
        else:
            item["modality"] = {"system": DCM, "code": "OT"}
        if s.description:
            item["description"] = s.description
        if s.body_part:
            item["bodySite"] = {"display": s.body_part}
        item["instance"] = [
            {"uid": i.sop_uid, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i.sop_class_uid}"},
             **({"number": i.number} if i.number is not None else {})}
            for i in sorted(s.instances, key=lambda i: (i.number is None, i.number or 0, i.sop_uid))
        ]
        series_out.append(item)
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{study.study_uid}"}],
        "status": "available",
        "subject": subject,
        "numberOfSeries": len(series_out),
        "numberOfInstances": sum(s["numberOfInstances"] for s in series_out),
        "series": series_out,
    }
    if study.accession:
        resource["identifier"].append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                            "code": "ACSN"}]}, "value": study.accession})
    if modalities:
        resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if started := dicom_date(study.date):
        resource["started"] = started
    if study.description:
        resource["description"] = study.description
    entries.append({"resource": resource,
                    "request": {"method": "PUT",
                                "url": f"ImagingStudy?identifier={DICOM_UID}|urn:oid:{study.study_uid}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def load_study(db: Database, study_uid: str) -> StudyRow | None:
    with db.reading() as s:
        st = s.scalars(select(Study).where(Study.study_uid == study_uid)).first()
        if st is None:
            return None
        row = StudyRow(st.study_uid, st.patient_id, st.patient_name, st.patient_birth_date, st.patient_sex,
                       st.study_date, st.study_time, st.accession_number, st.study_description)
        series: dict[int, SeriesRow] = {}
        for se in s.scalars(select(Series).where(Series.study_pk == st.id)):
            series[se.id] = SeriesRow(se.series_uid, se.modality, se.series_number, se.series_description,
                                      se.body_part_examined, None)
        for i in s.execute(select(Instance.series_pk, Instance.sop_uid, Instance.sop_class_uid,
                                  Instance.instance_number).where(Instance.study_pk == st.id)):
            series[i.series_pk].instances.append(InstanceRow(i.sop_uid, i.sop_class_uid, i.instance_number))
        row.series = list(series.values())
        return row


def sync_imaging_study(db: Database, fhir: FhirStore, study_uid: str,
                       patient_system: str = "urn:dicom:patient-id") -> str | None:
    """Write the study's ImagingStudy (and its Patient if new); returns ``ImagingStudy/<id>``."""
    study = load_study(db, study_uid)
    if study is None:
        return None
    started = dt.datetime.now()
    response = fhir.transaction(imaging_study_bundle(study, patient_system))
    location = str(response["entry"][-1]["response"].get("location", ""))
    log.debug("ImagingStudy for %s written in %.3f s: %s", study_uid,
              (dt.datetime.now() - started).total_seconds(), location)
    return "/".join(location.split("/")[:2]) if location else None
