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

Pure: datasets in (the evidence's headers), a dataset out; sending it is the write-back's job.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from operators.app_result import AppResult, Coding

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
                       sop_instance_uid: str, series_number: int = 9901, instance_number: int = 1
                       ) -> Comprehensive3DSR:
    """TID 1500 for ``result``; ``evidence`` are the source images' data sets (headers suffice)."""
    if not evidence:
        raise ValueError("a measurement report needs the images it was made from (evidence)")
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
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{result.app.name}: {f.name}"),
            finding_type=coded(f.code),
            algorithm_id=algorithm,
            qualitative_evaluations=[QualitativeEvaluation(
                name=coded(f.code), value=codes.SCT.Present if f.present else codes.SCT.Absent)],
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
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=procedure_reported(evidence),
        imaging_measurements=groups,
        referenced_images=library or None,
    )
    sr = Comprehensive3DSR(
        evidence=list(evidence), content=report, series_instance_uid=series_instance_uid,
        series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=series_description(result),
    )
    return sr


def series_description(result: AppResult) -> str:
    """Says the series is AI output, which app, and (for a demonstration model) not for clinical use;
    at most 64 characters (LO, PS3.5 §6.2)."""
    text = f"AI {result.app.name} {result.app.version}"
    if result.model.demonstration:
        text += " DEMO not for clinical use"
    return text[:64]
