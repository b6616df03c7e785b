"""TID 1500 reports built from app results (interop.writeback.sr), checked by dicom3tools' ``dciodvfy`` and
read back with highdicom and dcmtk's ``dsrdump``."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from interop.writeback.sr import SrSignoff, device_uid, measurement_report, series_description
from operators.app_result import AppResult
from tests.support import require_tool, sample_file

MODEL = {"name": "cxr_demo", "version": "0.1.0", "path": "/m", "sha256": "", "demonstration": True,
         "notice": "demonstration model, not for clinical use"}
SNOMED = "http://snomed.info/sct"


def _cxr_result(sop: str) -> AppResult:
    findings = [("cardiomegaly", "8186001", "Cardiomegaly", 0.91), ("pneumothorax", "36118008", "Pneumothorax", 0.02)]
    return AppResult.model_validate({
        "app": {"name": "cxr_triage", "version": "0.1.0"}, "model": MODEL, "notice": MODEL["notice"],
        "inputs": {"sop_instance_uids": [sop]},
        "findings": [{"name": n, "code": {"system": SNOMED, "code": c, "display": d}, "probability": p,
                      "threshold": 0.5, "present": p >= 0.5, "sop_instance_uid": sop} for n, c, d, p in findings],
    })


def _dciodvfy(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def test_cxr_findings_report_is_valid_unverified_tid1500(tmp_path: Path) -> None:
    cxr = pydicom.dcmread(sample_file("RG1_UNCI.dcm"), stop_before_pixels=True)
    sr = measurement_report(_cxr_result(cxr.SOPInstanceUID), [cxr], series_instance_uid=hd.UID(),
                            sop_instance_uid=hd.UID())
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == cxr.StudyInstanceUID and sr.PatientID == cxr.PatientID
    assert "DEMO not for clinical use" in sr.SeriesDescription and len(sr.SeriesDescription) <= 64
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert _dciodvfy(path) == []
    back = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    [template] = back.ContentTemplateSequence
    assert template.TemplateIdentifier == "1500"
    groups = back.content.get_observation_groups() if hasattr(back.content, "get_observation_groups") else None
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True).stdout
    assert "Imaging Measurement Report" in dump and "Probability" in dump
    assert "Cardiomegaly" in dump and "Present" in dump and "Absent" in dump
    assert "cxr_demo" in dump and "0.1.0" in dump  # algorithm name and version (TID 4019)
    assert device_uid("cxr_demo", "0.1.0") in dump  # the device observer
    del groups


def test_volume_measurements_carry_finding_site_and_laterality(tmp_path: Path) -> None:
    mr = pydicom.dcmread(sample_file("MR_small.dcm"), stop_before_pixels=True)
    site = {"system": SNOMED, "code": "5366008", "display": "Hippocampus"}
    result = AppResult.model_validate({
        "app": {"name": "mr_segmentation", "version": "0.1.0"}, "model": {**MODEL, "name": "mr_demo"},
        "notice": MODEL["notice"], "inputs": {},
        "measurements": [{"name": f"{side} hippocampus volume",
                          "code": {"system": SNOMED, "code": "118565006", "display": "Volume"},
                          "value": v, "unit": "mL", "finding_site": site, "segment_number": n,
                          "laterality": {"system": SNOMED, "code": lat, "display": side}}
                         for n, (side, lat, v) in enumerate([("Left", "7771000", 3.9), ("Right", "24028007", 4.1)], 1)],
    })
    sr = measurement_report(result, [mr], series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert _dciodvfy(path) == []
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True).stdout
    assert "Hippocampus" in dump and "Left" in dump and "Right" in dump and '"3.9"' in dump and "ml" in dump


def test_report_needs_evidence_and_content() -> None:
    empty = AppResult.model_validate({"app": {"name": "x", "version": "1"}, "model": MODEL, "notice": None,
                                      "inputs": {}})
    mr = pydicom.dcmread(sample_file("MR_small.dcm"), stop_before_pixels=True)
    with pytest.raises(ValueError, match="evidence"):
        measurement_report(empty, [], series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    with pytest.raises(ValueError, match="no findings or measurements"):
        measurement_report(empty, [mr], series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())


SIGNED_AT = datetime.datetime(2026, 11, 21, 10, 15, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))


def _signed_pair(tmp_path: Path, **signoff: object) -> tuple[pydicom.Dataset, Path, Path]:
    """The AI's unverified SR and the physician's signed-off one, both saved; returns (source, ai, signed)."""
    cxr = pydicom.dcmread(sample_file("RG1_UNCI.dcm"), stop_before_pixels=True)
    result = _cxr_result(cxr.SOPInstanceUID)
    series = hd.UID()
    ai = measurement_report(result, [cxr], series_instance_uid=series, sop_instance_uid=hd.UID())
    ai_path = tmp_path / "ai.dcm"
    ai.save_as(ai_path)
    predecessor = pydicom.dcmread(ai_path)
    args: dict[str, object] = {"verifier_name": "Doe^Jane", "organization": "General Hospital",
                               "verified_at": SIGNED_AT, "predecessor": predecessor, **signoff}
    signed = measurement_report(result, [cxr], series_instance_uid=series, sop_instance_uid=hd.UID(),
                                instance_number=2, signoff=SrSignoff(**args))  # type: ignore[arg-type]
    signed_path = tmp_path / "signed.dcm"
    signed.save_as(signed_path)
    return cxr, ai_path, signed_path


def _group_items(sr: hd.sr.Comprehensive3DSR, identifier: str) -> list[tuple[str, str, object]]:
    """(concept name, value type, value) of each content item of the measurement group ``identifier``."""
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    for group in report.get_image_measurement_groups():
        items = group[0].ContentSequence
        if any(i.name.meaning == "Tracking Identifier" and i.value == identifier for i in items):
            return [(i.name.meaning, i.value_type.value,
                     i.value.meaning if i.value_type.value == "CODE" else getattr(i, "value", None)) for i in items]
    raise AssertionError(f"no measurement group {identifier}")


def test_signed_off_report_is_verified_final_and_supersedes_the_ai_report(tmp_path: Path) -> None:
    _, ai_path, signed_path = _signed_pair(tmp_path, comment="Small apical pneumothorax on the right; agree otherwise.",
                                           overrides={"pneumothorax": True, "cardiomegaly": True})
    ai = pydicom.dcmread(ai_path)
    signed = pydicom.dcmread(signed_path)
    assert (signed.VerificationFlag, signed.PreliminaryFlag, signed.CompletionFlag) == ("VERIFIED", "FINAL", "COMPLETE")
    [verifier] = signed.VerifyingObserverSequence
    assert str(verifier.VerifyingObserverName) == "Doe^Jane" and verifier.VerifyingOrganization == "General Hospital"
    assert verifier.VerificationDateTime == "20261121101500+0100"
    [study] = signed.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [sop] = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID, sop.ReferencedSOPInstanceUID,
            sop.ReferencedSOPClassUID) == (ai.StudyInstanceUID, ai.SeriesInstanceUID, ai.SOPInstanceUID, ai.SOPClassUID)
    assert signed.SOPInstanceUID != ai.SOPInstanceUID and signed.StudyInstanceUID == ai.StudyInstanceUID
    assert signed.SeriesDescription.startswith("Signed off AI") and len(signed.SeriesDescription) <= 64
    assert "DEMO not for clinical use" in signed.SeriesDescription
    assert ai.VerificationFlag == "UNVERIFIED" and "Signed" not in ai.SeriesDescription

    sr = hd.sr.Comprehensive3DSR.from_dataset(signed)
    # Overridden: the physician's Present, the AI's probability as it was, and what the AI said.
    pneumothorax = _group_items(sr, "cxr_triage: pneumothorax")
    assert ("Pneumothorax", "CODE", "Present") in pneumothorax
    assert ("Probability", "NUM", 0.02) in pneumothorax
    assert ("Comment", "TEXT", "Physician: Present; AI: Absent (probability 0.02, threshold 0.50)") in pneumothorax
    assert not any(name == "Algorithm Name" for name, _, _ in pneumothorax)  # the evaluation is not the AI's
    # Accepted (an "override" equal to the AI's value): unchanged, attributed to the algorithm.
    cardiomegaly = _group_items(sr, "cxr_triage: cardiomegaly")
    assert ("Cardiomegaly", "CODE", "Present") in cardiomegaly and ("Probability", "NUM", 0.91) in cardiomegaly
    assert ("Algorithm Name", "TEXT", "cxr_demo") in cardiomegaly
    assert not any(name == "Comment" for name, _, _ in cardiomegaly)
    root = sr.content[0].ContentSequence
    observers = [i.value.meaning for i in root if i.name.meaning == "Observer Type"]
    assert observers == ["Person", "Device"]
    [evaluations] = [i for i in root if i.name.meaning == "Qualitative Evaluations"]
    assert [(i.name.meaning, i.value) for i in evaluations.ContentSequence] == [
        ("Comment", "Small apical pneumothorax on the right; agree otherwise.")]

    assert _dciodvfy(signed_path) == []
    dump = subprocess.run([require_tool("dsrdump"), "+Pt", "+Pl", str(signed_path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    out = dump.stdout
    assert "Verification Flag   : VERIFIED" in out and "Doe^Jane, General Hospital" in out
    assert "Predecessor Docs    : 1" in out and "TID 1500 (DCMR)" in out and "TID 1501 (DCMR)" in out
    assert '"Person Observer Name")="Doe^Jane"' in out and '(121098,DCM,"Verifying")' in out
    assert "Small apical pneumothorax on the right; agree otherwise." in out


def test_signed_off_report_without_changes_keeps_the_ai_evaluations(tmp_path: Path) -> None:
    _, _, signed_path = _signed_pair(tmp_path)
    signed = pydicom.dcmread(signed_path)
    assert signed.VerificationFlag == "VERIFIED"
    sr = hd.sr.Comprehensive3DSR.from_dataset(signed)
    assert ("Pneumothorax", "CODE", "Absent") in _group_items(sr, "cxr_triage: pneumothorax")
    assert not any(i.name.meaning == "Qualitative Evaluations" for i in sr.content[0].ContentSequence)
    assert _dciodvfy(signed_path) == []


def test_signoff_refuses_unknown_findings_naive_times_and_another_study(tmp_path: Path) -> None:
    cxr = pydicom.dcmread(sample_file("RG1_UNCI.dcm"), stop_before_pixels=True)
    result = _cxr_result(cxr.SOPInstanceUID)
    ai = measurement_report(result, [cxr], series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    ok = SrSignoff("Doe^Jane", "General Hospital", SIGNED_AT, ai)

    def sign(signoff: SrSignoff) -> None:
        measurement_report(result, [cxr], series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), signoff=signoff)

    sign(ok)
    with pytest.raises(ValueError, match="does not have"):
        sign(SrSignoff("Doe^Jane", "General Hospital", SIGNED_AT, ai, overrides={"edema": True}))
    with pytest.raises(ValueError, match="timezone"):
        sign(SrSignoff("Doe^Jane", "General Hospital", SIGNED_AT.replace(tzinfo=None), ai))
    elsewhere = pydicom.Dataset()
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        setattr(elsewhere, keyword, ai[keyword].value)
    elsewhere.StudyInstanceUID = hd.UID()
    with pytest.raises(ValueError, match="another study"):
        sign(SrSignoff("Doe^Jane", "General Hospital", SIGNED_AT, elsewhere))


def test_series_description_keeps_the_notice_for_long_app_names() -> None:
    result = AppResult.model_validate({"app": {"name": "x" * 80, "version": "1.0"}, "model": MODEL,
                                       "notice": MODEL["notice"], "inputs": {}})
    for head in ("AI", "Signed off AI", "AI heat-maps"):
        text = series_description(result, head=head)
        assert len(text) == 64 and text.startswith(head + " x") and text.endswith("DEMO not for clinical use")


def test_label_map_as_dicom_seg_references_each_source_slice(tmp_path: Path) -> None:
    import numpy as np

    from interop.writeback.seg import segmentation

    if not Path("/usr/share/mricron/templates/ch2.nii.gz").exists():
        pytest.skip("mricron-data is not installed (tests/run.sh: apt-get install mricron-data)")
    from apps.mr_segmentation.make_demo_series import make_demo_series

    files = make_demo_series(tmp_path / "mr", step=12)
    slices = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in files),
                    key=lambda d: float(d.ImagePositionPatient[2]))
    labels = np.zeros((len(slices), slices[0].Rows, slices[0].Columns), dtype=np.uint8)
    labels[2:5, 60:90, 50:80] = 1
    labels[3:6, 100:120, 100:130] = 3  # segment 2 is absent from this map
    segments = [{"number": n, "name": name, "code": {"system": SNOMED, "code": code, "display": name}}
                for n, name, code in ((1, "Thalamus", "42695009"), (2, "Putamen", "89278009"),
                                      (3, "Hippocampus", "5366008"))]
    result = AppResult.model_validate({
        "app": {"name": "mr_segmentation", "version": "0.1.0"}, "model": {**MODEL, "name": "mr_demo"},
        "notice": MODEL["notice"], "inputs": {},
        "segmentations": [{"file": "labels.npy", "segments": segments,
                           "series_instance_uid": slices[0].SeriesInstanceUID,
                           "referenced_sop_instance_uids": [d.SOPInstanceUID for d in slices]}],
    })
    seg = segmentation(result, result.segmentations[0], labels, slices, series_instance_uid=hd.UID(),
                       sop_instance_uid=hd.UID())
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    assert _dciodvfy(path) == []
    back = hd.seg.segread(path)
    assert [d.SegmentLabel for d in back.SegmentSequence] == ["Thalamus", "Hippocampus"]
    assert all(d.SegmentAlgorithmType == "AUTOMATIC" for d in back.SegmentSequence)
    assert back.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "5366008"
    referenced = {ref.ReferencedSOPInstanceUID for f in back.PerFrameFunctionalGroupsSequence
                  for ref in f.DerivationImageSequence[0].SourceImageSequence}
    assert referenced == {d.SOPInstanceUID for d in slices[2:6]}  # the slices the segments lie on
