"""TID 1500 reports built from app results (interop.writeback.sr), checked by dicom3tools' ``dciodvfy`` and
read back with highdicom and dcmtk's ``dsrdump``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from interop.writeback.sr import device_uid, measurement_report
from operators.app_result import AppResult
from tests.support import require_tool

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
    cxr = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"), stop_before_pixels=True)
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
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
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
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    with pytest.raises(ValueError, match="evidence"):
        measurement_report(empty, [], series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    with pytest.raises(ValueError, match="no findings or measurements"):
        measurement_report(empty, [mr], series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())


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
