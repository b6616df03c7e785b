"""A finding's heat-map as a Secondary Capture over the source radiograph (interop.writeback.heatmap), built from
pydicom-data's real chest CR (RG1_UNCI, 1955 x 1841, MONOCHROME1, itself lossy JPEG 2000 10:1) and a synthetic
heat-map, checked by dicom3tools' ``dciodvfy`` and read back with pydicom."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage

from interop.writeback.heatmap import display_grey, heatmap_capture
from operators.app_result import AppResult
from tests.support import require_tool, sample_file

MODEL = {"name": "cxr_demo", "version": "0.1.0", "path": "/m", "sha256": "", "demonstration": True,
         "notice": "demonstration model, not for clinical use"}
HOT = (1200, 950)  # row, column of the heat-map's peak: over the heart
COLD = (750, 450)  # far from it (the heat there is < 0.001): mid-grey lung on the image's left


def _result(sop: str, *, demonstration: bool = True) -> AppResult:
    model = {**MODEL, "demonstration": demonstration, "notice": MODEL["notice"] if demonstration else None}
    return AppResult.model_validate({
        "app": {"name": "cxr_triage", "version": "0.1.0"}, "model": model, "notice": model["notice"],
        "inputs": {"sop_instance_uids": [sop]},
        "findings": [{"name": "cardiomegaly", "code": {"system": "http://snomed.info/sct", "code": "8186001",
                                                       "display": "Cardiomegaly"},
                      "probability": 0.83, "threshold": 0.379, "present": True,
                      "heatmap": "heatmap_cardiomegaly.npy", "sop_instance_uid": sop}],
    })


def _heat(rows: int, cols: int) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.exp(-(((yy - HOT[0]) / 220.0) ** 2 + ((xx - HOT[1]) / 260.0) ** 2)).astype(np.float32)


@pytest.fixture(scope="module")
def cxr() -> pydicom.Dataset:
    return pydicom.dcmread(sample_file("RG1_UNCI.dcm"))


@pytest.fixture(scope="module")
def capture(cxr: pydicom.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = _result(cxr.SOPInstanceUID)
    sc = heatmap_capture(result, result.findings[0], _heat(cxr.Rows, cxr.Columns), cxr,
                         series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), instance_number=1)
    path = tmp_path_factory.mktemp("heatmap") / "heatmap.dcm"
    sc.save_as(path)
    return path


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def test_heatmap_capture_is_a_valid_secondary_capture_in_the_source_study(cxr: pydicom.Dataset,
                                                                          capture: Path) -> None:
    assert _dciodvfy_errors(capture) == []
    sc = pydicom.dcmread(capture)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage and sc.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert (sc.PatientID, sc.PatientName, sc.StudyInstanceUID) == (cxr.PatientID, cxr.PatientName,
                                                                   cxr.StudyInstanceUID)
    assert sc.SeriesInstanceUID != cxr.SeriesInstanceUID and sc.SeriesNumber == 9902
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    [ref] = sc.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (cxr.SOPClassUID, cxr.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    # Geometry: the source's own matrix and orientation, nothing resampled.
    assert (sc.Rows, sc.Columns) == (cxr.Rows, cxr.Columns)
    assert list(sc.PatientOrientation) == list(cxr.PatientOrientation)
    assert sc.BodyPartExamined == "CHEST"
    assert (sc.SamplesPerPixel, sc.BitsAllocated, sc.PhotometricInterpretation) == (3, 8, "YBR_FULL_422")
    # No text that identifies the patient or the date is burned in (the caption names the finding only).
    assert sc.BurnedInAnnotation == "NO"


def test_heatmap_capture_says_lossy_after_the_sources_own_lossy_step(cxr: pydicom.Dataset, capture: Path) -> None:
    sc = pydicom.dcmread(capture)
    assert cxr.LossyImageCompression == "01" and cxr.LossyImageCompressionMethod == "ISO_15444_1"
    assert sc.LossyImageCompression == "01"
    assert list(sc.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_10918_1"]  # in the order applied
    first, ours = (float(v) for v in sc.LossyImageCompressionRatio)
    assert first == 10.0
    frame = next(pydicom.encaps.generate_frames(sc.PixelData, number_of_frames=1))
    assert ours == pytest.approx(sc.Rows * sc.Columns * 3 / len(frame), abs=0.05) and ours > 5
    assert sc.DerivationCodeSequence[0].CodeValue == "113040"  # Lossy Compression
    # 1955 x 1841 RGB is 10.8 MB uncompressed (14.4 MB as float32); the JPEG object is well under 2 MB.
    assert capture.stat().st_size < 2_000_000


def test_heatmap_capture_says_ai_demonstration_model_not_for_clinical_use(capture: Path) -> None:
    sc = pydicom.dcmread(capture)
    wording = "AI heat-map of Cardiomegaly (p=0.83), cxr_demo 0.1.0, demonstration model, not for clinical use"
    assert sc.ImageComments == wording
    assert sc.DerivationDescription.startswith(wording)
    assert sc.SeriesDescription == "AI heat-maps cxr_triage 0.1.0 DEMO not for clinical use"
    assert (sc.Manufacturer, sc.ManufacturerModelName, sc.SoftwareVersions) == ("interop", "cxr_triage 0.1.0",
                                                                               "cxr_demo 0.1.0")


def test_hot_region_is_coloured_and_cold_region_keeps_the_grey_image(cxr: pydicom.Dataset, capture: Path) -> None:
    rgb = pydicom.dcmread(capture).pixel_array.astype(np.int16)  # pydicom converts YBR_FULL_422 to RGB
    assert rgb.shape == (cxr.Rows, cxr.Columns, 3)
    r, c = HOT
    hot = rgb[r - 10 : r + 10, c - 10 : c + 10].reshape(-1, 3).mean(axis=0)
    assert hot[0] - max(hot[1], hot[2]) > 100  # red on top
    r, c = COLD
    cold = rgb[r - 20 : r + 20, c - 20 : c + 20]
    grey = display_grey(cxr)[r - 20 : r + 20, c - 20 : c + 20] * 255.0
    assert np.abs(cold[..., 0] - cold[..., 1]).mean() < 3 and np.abs(cold[..., 1] - cold[..., 2]).mean() < 3
    assert np.abs(cold.mean(axis=-1) - grey).mean() < 4  # the windowed radiograph, untouched up to JPEG loss
    # The caption box (black, white text) in the top left corner.
    corner = rgb[:60, :400]
    assert (corner.max(axis=-1) < 30).mean() > 0.5 and (corner.min(axis=-1) > 200).any()


def test_grey_is_displayed_polarity_lungs_dark_mediastinum_bright(cxr: pydicom.Dataset) -> None:
    grey = display_grey(cxr)  # MONOCHROME1: low stored values display white, so it is inverted
    assert grey.shape == (cxr.Rows, cxr.Columns) and grey.min() >= 0.0 and grey.max() <= 1.0
    lung = grey[700:800, 400:500].mean()
    mediastinum = grey[700:800, 880:960].mean()
    assert lung + 0.2 < mediastinum


def test_site_model_has_no_demo_notice(cxr: pydicom.Dataset) -> None:
    result = _result(cxr.SOPInstanceUID, demonstration=False)
    sc = heatmap_capture(result, result.findings[0], _heat(cxr.Rows, cxr.Columns), cxr,
                         series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), instance_number=3)
    assert sc.ImageComments == "AI heat-map of Cardiomegaly (p=0.83), cxr_demo 0.1.0"
    assert "DEMO" not in sc.SeriesDescription and sc.InstanceNumber == 3


def test_uncompressed_source_gets_a_single_lossy_step(tmp_path: Path) -> None:
    ct = pydicom.dcmread(sample_file("CT_small.dcm"))
    assert "LossyImageCompression" not in ct
    result = _result(ct.SOPInstanceUID)
    heat = np.zeros((ct.Rows, ct.Columns), np.float32)
    heat[40:80, 40:80] = 1.0
    sc = heatmap_capture(result, result.findings[0], heat, ct, series_instance_uid=hd.UID(),
                         sop_instance_uid=hd.UID(), instance_number=1)
    assert sc.LossyImageCompression == "01" and sc.LossyImageCompressionMethod == "ISO_10918_1"
    path = tmp_path / "ct_heatmap.dcm"
    sc.save_as(path)
    assert _dciodvfy_errors(path) == []


def test_heatmap_capture_refuses_a_mismatched_map_or_image(cxr: pydicom.Dataset) -> None:
    result = _result(cxr.SOPInstanceUID)
    finding = result.findings[0]
    kwargs = {"series_instance_uid": hd.UID(), "sop_instance_uid": hd.UID(), "instance_number": 1}
    with pytest.raises(ValueError, match="heat-map is"):
        heatmap_capture(result, finding, np.zeros((224, 224), np.float32), cxr, **kwargs)  # type: ignore[arg-type]
    bad = _heat(cxr.Rows, cxr.Columns)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        heatmap_capture(result, finding, bad, cxr, **kwargs)  # type: ignore[arg-type]
    other = finding.model_copy(update={"sop_instance_uid": "1.2.3.4"})
    with pytest.raises(ValueError, match="refers to image"):
        heatmap_capture(result, other, _heat(cxr.Rows, cxr.Columns), cxr, **kwargs)  # type: ignore[arg-type]
