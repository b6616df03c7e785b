"""An app result as a DICOM Comprehensive 3D SR Imaging Measurement Report (PS3.16 TID 1500), built with
highdicom so that an invalid object never exists.

- Observer context: the model as a *device* observer (TID 1002/1004): a UID derived from its name and
  version, the model's name, "interop" as manufacturer.
- Each present/absent finding is one Measurement Group (TID 1501): finding type = the finding's concept; a
  qualitative evaluation "<finding> = Present | Absent"; the probability as a measurement (DCM 122157
  "Probability", UCUM "1"); algorithm identification (TID 4019: model name and version); the image it was read
  from as the group's source image.
- Each measurement (e.g. a structure's volume) is one Measurement Group with its finding site and laterality.
- VerificationFlag UNVERIFIED and CompletionFlag COMPLETE: AI output is never final until a physician signs
  (DESIGN promise 5); a demonstration model says so in the Series Description.

A physician's sign-off (:class:`SrSignoff`) makes the *verified* version of the same report, a new SR instance
(PS3.3 C.17.2): VerificationFlag VERIFIED with the Verifying Observer Sequence (name, organization, the
sign-off time), PreliminaryFlag FINAL, CompletionFlag COMPLETE, and the earlier (unverified) SR in the
Predecessor Documents Sequence. How the content tree tells the physician's word from the AI's:

- the observation context (TID 1001) names the physician as a *person* observer (TID 1003: name, organization,
  role in organization "Physician", role in procedure "Verifying") before the model's device observer;
- every finding keeps the AI's probability measurement (TID 300 with its own TID 4019 algorithm
  identification), unchanged;
- a finding the physician accepted keeps the AI's evaluation and the group-level algorithm identification;
- a finding the physician overrode carries the *physician's* Present/Absent as its qualitative evaluation
  (TID 1501 row 11), no group-level algorithm identification (the evaluation is no longer the algorithm's),
  and a TEXT qualitative evaluation (TID 1501 row 12, DCM 121106 "Comment") saying what the AI said: e.g.
  "Physician: Present; AI: Absent (probability 0.32, threshold 0.50)";
- the physician's comment, if any, is a report-level qualitative evaluation (TID 1500 rows 12 and 14: the
  container UMLS C0034375 "Qualitative Evaluations" holding a TEXT DCM 121106 "Comment"), which highdicom's
  MeasurementReport does not build, so it is appended to its content tree with highdicom's content items.

Codes (PS3.16): Present/Absent are CID 241 "Present-Absent Only" (SCT 52101004 / SCT 272519000); the
probability is DCM 122157 "Probability" with UCUM "1"; the physician's roles are CID 7452 "Physician" (SCT
309343006) and CID 7453 "Verifying" (DCM 121098).

Pure: datasets in (the evidence's headers), a dataset out; sending it is the write-back's job.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.templates import Template
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from operators.app_result import AppResult, Coding, Finding

#: FHIR code system URI → DICOM coding scheme designator (PS3.16 §8).
SCHEMES = {
    "http://snomed.info/sct": "SCT",
    "http://loinc.org": "LN",
    "http://unitsofmeasure.org": "UCUM",
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
    "http://radlex.org": "RADLEX",
}
#: A code system we don't know gets this private designator (PS3.16: private schemes start with "99").
LOCAL_SCHEME = "99INTEROP"
UNITS = {"mL": ("ml", "milliliter"), "ml": ("ml", "milliliter"), "mm": ("mm", "millimeter"),
         "mm3": ("mm3", "cubic millimeter"), "1": ("1", "no units"), "%": ("%", "percent")}
MANUFACTURER = "interop"
#: TID 1500 row 12 (UMLS C0034375); pydicom's code dictionary has no keyword for it.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


@dataclass(frozen=True)
class SrSignoff:
    """A physician's sign-off of an AI report: who, where, when, what they changed, and the report it verifies."""

    verifier_name: str  # DICOM PN, e.g. "Doe^Jane"
    organization: str  # Verifying Organization
    verified_at: datetime.datetime  # timezone-aware
    predecessor: Dataset  # the earlier SR of this report (header suffices: Study/Series/SOP UIDs, SOP Class)
    overrides: dict[str, bool] = field(default_factory=dict)  # Finding.name -> the physician's present/absent
    comment: str | None = None  # the physician's note (amend/accept)


class TextQualitativeEvaluation(QualitativeEvaluation):
    """TID 1501 row 12: a qualitative evaluation as TEXT (highdicom's QualitativeEvaluation is row 11, CODE)."""

    def __init__(self, name: CodedConcept, value: str) -> None:
        Template.__init__(self, [TextContentItem(name=name, value=value,
                                                 relationship_type=RelationshipTypeValues.CONTAINS)])


def coded(c: Coding) -> CodedConcept:
    return CodedConcept(value=c.code, scheme_designator=SCHEMES.get(c.system, LOCAL_SCHEME), meaning=c.display)


def unit(ucum: str) -> CodedConcept:
    code, meaning = UNITS.get(ucum, (ucum, ucum))
    return CodedConcept(value=code, scheme_designator="UCUM", meaning=meaning)


def device_uid(model_name: str, model_version: str) -> str:
    """A stable UID for a model version (PS3.5 §B.2: 2.25 + a UUID as an integer)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'interop:model:{model_name}:{model_version}').int}"


def procedure_reported(evidence: Sequence[Dataset]) -> CodedConcept:
    """The imaging procedure: the study's Procedure Code Sequence where the evidence has one, else
    SNOMED CT 363679005 "Imaging procedure"."""
    for ds in evidence:
        seq = getattr(ds, "ProcedureCodeSequence", None)
        if seq:
            item = seq[0]
            return CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
    return CodedConcept.from_code(codes.SCT.ImagingProcedure)


def measurement_report(result: AppResult, evidence: Sequence[Dataset], *, series_instance_uid: str,
                       sop_instance_uid: str, series_number: int = 9901, instance_number: int = 1,
                       signoff: SrSignoff | None = None) -> Comprehensive3DSR:
    """TID 1500 for ``result``; ``evidence`` are the source images' data sets (headers suffice).

    Without ``signoff`` the AI's unverified report; with it the physician-verified report that supersedes
    ``signoff.predecessor`` (see the module docstring for how overrides and the comment are shown)."""
    if not evidence:
        raise ValueError("a measurement report needs the images it was made from (evidence)")
    if signoff is not None:
        _check_signoff(result, signoff, str(evidence[0].StudyInstanceUID))
    overrides = signoff.overrides if signoff is not None else {}
    model = result.model
    algorithm = AlgorithmIdentification(name=model.name, version=model.version, manufacturer=MANUFACTURER)
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid(model.name, model.version), name=model.name, manufacturer_name=MANUFACTURER,
            model_name=f"{result.app.name} {result.app.version}"),
    )
    by_sop = {str(ds.SOPInstanceUID): ds for ds in evidence}
    groups: list[MeasurementsAndQualitativeEvaluations] = []
    for f in result.findings:
        source = by_sop.get(f.sop_instance_uid or "") or evidence[0]
        present = overrides.get(f.name, f.present)
        overridden = present != f.present
        evaluations: list[QualitativeEvaluation] = [QualitativeEvaluation(name=coded(f.code), value=_present(present))]
        if overridden:
            evaluations.append(TextQualitativeEvaluation(codes.DCM.Comment, override_note(f, present)))
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{result.app.name}: {f.name}"),
            finding_type=coded(f.code),
            algorithm_id=None if overridden else algorithm,
            qualitative_evaluations=evaluations,
            measurements=[Measurement(name=codes.DCM.Probability, value=round(f.probability, 6),
                                      unit=unit("1"), algorithm_id=algorithm)],
            source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        ))
    for m in result.measurements:
        sites = [FindingSite(anatomic_location=coded(m.finding_site),
                             laterality=coded(m.laterality) if m.laterality else None)] if m.finding_site else None
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{result.app.name}: {m.name}"),
            finding_type=coded(m.finding_site) if m.finding_site else coded(m.code),
            algorithm_id=algorithm,
            finding_sites=sites,
            measurements=[Measurement(name=coded(m.code), value=m.value, unit=unit(m.unit), algorithm_id=algorithm)],
        ))
    if not groups:
        raise ValueError(f"the result of {result.app.name} has no findings or measurements to report")
    # The Image Library (TID 1600, optional) for cross-sectional images; highdicom's projection-radiograph
    # descriptors demand Imager Pixel Spacing, which many radiographs lack, and each finding group already
    # names its source image.
    library = [ds for ds in evidence if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds]
    person = None
    if signoff is not None:
        person = ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=signoff.verifier_name, organization_name=signoff.organization,
                role_in_organization=codes.cid7452.Physician, role_in_procedure=codes.cid7453.Verifying),
        )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_person_context=person, observer_device_context=observer),
        procedure_reported=procedure_reported(evidence),
        imaging_measurements=groups,
        referenced_images=library or None,
    )
    if signoff is not None and signoff.comment:
        evaluations_item = ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                                relationship_type=RelationshipTypeValues.CONTAINS)
        evaluations_item.ContentSequence = ContentSequence([TextContentItem(
            name=codes.DCM.Comment, value=signoff.comment, relationship_type=RelationshipTypeValues.CONTAINS)])
        report[0].ContentSequence.append(evaluations_item)  # TID 1500 row 12, after Imaging Measurements
    sr = Comprehensive3DSR(
        evidence=list(evidence), content=report, series_instance_uid=series_instance_uid,
        series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=True, is_final=signoff is not None,
        is_verified=signoff is not None,
        verifying_observer_name=signoff.verifier_name if signoff is not None else None,
        verifying_organization=signoff.organization if signoff is not None else None,
        previous_versions=[signoff.predecessor] if signoff is not None else None,
        series_description=series_description(result, head="Signed off AI" if signoff else "AI"),
    )
    if signoff is not None:
        # highdicom stamps the time of construction; the verification happened when the physician signed.
        sr.VerifyingObserverSequence[0].VerificationDateTime = DT(signoff.verified_at.replace(microsecond=0))
    return sr


def _present(present: bool) -> CodedConcept:
    return CodedConcept.from_code(codes.SCT.Present if present else codes.SCT.Absent)


def override_note(f: Finding, physician: bool) -> str:
    """What the SR says where the physician's Present/Absent differs from the AI's."""
    word = {True: "Present", False: "Absent"}
    return (f"Physician: {word[physician]}; AI: {word[f.present]} "
            f"(probability {f.probability:.2f}, threshold {f.threshold:.2f})")


def _check_signoff(result: AppResult, signoff: SrSignoff, study_instance_uid: str) -> None:
    unknown = sorted(set(signoff.overrides) - {f.name for f in result.findings})
    if unknown:
        raise ValueError(f"sign-off overrides findings the result does not have: {unknown}")
    if signoff.verified_at.tzinfo is None or signoff.verified_at.utcoffset() is None:
        raise ValueError("the sign-off time must be timezone-aware")
    if not signoff.verifier_name.strip() or not signoff.organization.strip():
        raise ValueError("a sign-off needs the verifying physician's name and organization")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not signoff.predecessor.get(keyword):
            raise ValueError(f"the predecessor SR has no {keyword}")
    if str(signoff.predecessor.StudyInstanceUID) != study_instance_uid:
        raise ValueError("the predecessor SR belongs to another study than the evidence")


def series_description(result: AppResult, *, head: str = "AI") -> str:
    """``head`` (what the series is: "AI", "Signed off AI", "AI heat-maps"), which app, and (for a
    demonstration model) not for clinical use; at most 64 characters (LO, PS3.5 §6.2), the app's name
    shortened first so that the notice always fits."""
    tail = " DEMO not for clinical use" if result.model.demonstration else ""
    app = f"{result.app.name} {result.app.version}"[: 64 - len(head) - 1 - len(tail)]
    return f"{head} {app}{tail}"
