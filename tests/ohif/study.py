"""A study for the viewer tests: the Colin27 brain MR series (``apps.mr_segmentation.make_demo_series``), a DICOM
SEG of its AAL structures and a TID 1500 SR of their volumes, both made by the node's own write-back code
(:mod:`interop.writeback.seg`, :mod:`interop.writeback.sr`) from an app result, as a job would make them.

The label map is the AAL atlas merged into mr_segmentation's structures, sampled on the series' own slices;
no model runs (the test is about the viewer, not the app)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom

TEMPLATES = Path("/usr/share/mricron/templates")
SNOMED = "http://snomed.info/sct"
#: mr_segmentation's structures shown in the SEG (left/right thalamus, putamen, hippocampus, cerebellum).
SHOWN = (3, 4, 5, 8, 9, 10, 11)
MODEL = {"name": "mr_demo", "version": "0.1.0", "path": "/m", "sha256": "", "demonstration": True,
         "notice": "demonstration model, not for clinical use"}


@dataclass(frozen=True)
class Study:
    study_uid: str
    images: list[Path]
    seg: Path
    sr: Path
    image_series_uid: str
    seg_series_uid: str
    sr_series_uid: str

    @property
    def files(self) -> list[Path]:
        return [*self.images, self.seg, self.sr]


def make_study(out: Path, step: int = 4) -> Study:
    from apps.mr_segmentation.make_demo_series import lps_volume, make_demo_series
    from apps.mr_segmentation.train import STRUCTURES, merge_aal
    from interop.writeback.seg import segmentation
    from interop.writeback.sr import measurement_report
    from operators.app_result import AppResult

    images = make_demo_series(out / "mr", step=step, patient_id="OHIF-0001", patient_name="Viewer^Test",
                              accession_number="OHIF1")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in images]
    aal, _ = lps_volume(TEMPLATES / "aal.nii.gz")
    merged = merge_aal(np.rint(aal))
    shown = [s for s in STRUCTURES if s.number in SHOWN]
    merged[~np.isin(merged, [s.number for s in shown])] = 0
    # Slice k of the series averages source slices k*step .. k*step+step-1: take the middle one's labels,
    # laid out as the pixels are (make_demo_series writes volume[:, :, k].T).
    labels = np.stack([merged[:, :, k * step + step // 2].T for k in range(len(images))]).astype(np.uint8)
    voxel_ml = float(step) / 1000.0  # 1 mm x 1 mm pixels, `step` mm slices
    result = AppResult.model_validate({
        "app": {"name": "mr_segmentation", "version": "0.1.0"}, "model": MODEL, "notice": MODEL["notice"],
        "inputs": {"study_instance_uid": str(headers[0].StudyInstanceUID)},
        "measurements": [
            {"name": f"{s.name} volume", "code": {"system": SNOMED, "code": "118565006", "display": "Volume"},
             "value": round(float((labels == s.number).sum()) * voxel_ml, 2), "unit": "mL",
             "finding_site": {"system": SNOMED, "code": s.code, "display": s.display}, "segment_number": s.number,
             **({"laterality": s.laterality} if s.laterality else {})}
            for s in shown],
        "segmentations": [{"file": "labels.npy",
                           "segments": [{k: v for k, v in s.as_dict().items() if k != "aal_labels"} for s in shown],
                           "series_instance_uid": str(headers[0].SeriesInstanceUID),
                           "referenced_sop_instance_uids": [str(h.SOPInstanceUID) for h in headers]}],
    })
    seg_series, sr_series = hd.UID(), hd.UID()
    seg = segmentation(result, result.segmentations[0], labels, headers, series_instance_uid=seg_series,
                       sop_instance_uid=hd.UID())
    sr = measurement_report(result, headers, series_instance_uid=sr_series, sop_instance_uid=hd.UID())
    seg_path, sr_path = out / "seg.dcm", out / "sr.dcm"
    seg.save_as(seg_path)
    sr.save_as(sr_path)
    return Study(str(headers[0].StudyInstanceUID), images, seg_path, sr_path, str(headers[0].SeriesInstanceUID),
                 str(seg_series), str(sr_series))


def stow(client: httpx.Client, files: Iterable[Path]) -> None:
    """STOW-RS the files to the node in one request (PS3.18 §10.5)."""
    boundary = "ohif-test-boundary-7d1f"
    body = bytearray()
    for f in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    r = client.post("/dicomweb/studies", content=bytes(body),
                    headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text
