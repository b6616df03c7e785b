"""Turn a NIfTI T1 volume (default: Colin27 ``ch2.nii.gz``) into a DICOM MR Image Storage series, one file per slice.

``python -m apps.mr_segmentation.make_demo_series --out DIR [--step 2] [--patient-id ID] ...``

The volume is reoriented so that its axes run toward patient Left, Posterior, Superior (DICOM LPS, PS3.3
C.7.6.2.1.1), which gives axial slices with Image Orientation Patient ``1\\0\\0\\0\\1\\0`` and Image Position
Patient increasing toward the head. NIfTI world coordinates are RAS, so ``lps = diag(-1, -1, 1) · ras``.
``step`` > 1 averages each run of ``step`` slices into one thicker slice (Slice Thickness and Spacing Between
Slices = ``step`` × the voxel size), so that a test series is small but still the same anatomy.
Pixels are 16-bit (12 bits stored): the source intensities × ``scale`` (default 16), rounded.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel import orientations
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from operators.volume_geometry import RAS_TO_LPS

CH2 = Path("/usr/share/mricron/templates/ch2.nii.gz")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")


def lps_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The NIfTI volume reoriented to axes (L, P, S) and its LPS affine (array index → LPS mm)."""
    img = cast(nib.Nifti1Image, nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    transform = orientations.ornt_transform(orientations.io_orientation(img.affine),
                                            orientations.axcodes2ornt(("L", "P", "S")))
    data = orientations.apply_orientation(data, transform)
    affine_ras = img.affine @ orientations.inv_ornt_aff(transform, img.shape[:3])
    return np.ascontiguousarray(data), RAS_TO_LPS @ affine_ras


def thick_slices(volume: np.ndarray, affine: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Average runs of ``step`` slices along the last axis; the affine of the averaged (thicker) slices."""
    if step < 1:
        raise ValueError("step must be >= 1")
    n = volume.shape[2] // step
    vol = volume[:, :, : n * step].reshape(volume.shape[0], volume.shape[1], n, step).mean(axis=3)
    aff = np.array(affine, dtype=float)
    aff[:3, 3] = aff[:3, 3] + aff[:3, 2] * (step - 1) / 2.0  # centre of the first run
    aff[:3, 2] = aff[:3, 2] * step
    return vol, aff


def _ds(value: float) -> str:
    """A Decimal String (max 16 characters) for ``value``."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def make_demo_series(
    out: str | Path,
    nifti: str | Path = CH2,
    *,
    step: int = 1,
    patient_id: str = "DEMO-MR-0001",
    patient_name: str = "Demo^Colin27",
    patient_birth_date: str = "19700101",
    patient_sex: str = "M",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    accession_number: str = "",
    study_id: str = "1",
    study_description: str = "MR brain (demonstration)",
    series_description: str = "T1 3D Colin27 (demonstration)",
    series_number: int = 1,
    study_datetime: datetime | None = None,
    scale: float = 16.0,
) -> list[Path]:
    """Write one MR Image Storage file per (possibly averaged) axial slice into ``out``; returns their paths.

    SOP Instance UIDs are derived from the series UID and the slice number, so a given series UID always
    gives the same files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    volume, affine = thick_slices(*lps_volume(nifti), step)
    study_uid = str(study_instance_uid or generate_uid())
    series_uid = str(series_instance_uid or generate_uid())
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
    when = study_datetime or datetime(2024, 1, 1, 9, 0, 0)
    column_vec, row_vec, slice_vec = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    col_spacing, row_spacing = float(np.linalg.norm(column_vec)), float(np.linalg.norm(row_vec))
    thickness = float(np.linalg.norm(slice_vec))
    orientation = [*(column_vec / col_spacing), *(row_vec / row_spacing)]
    pixels = np.clip(np.rint(volume * scale), 0, 4095).astype(np.uint16)
    paths = []
    for k in range(volume.shape[2]):
        position = (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds = _slice_dataset(pixels[:, :, k].T, k)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.PatientBirthDate, ds.PatientSex = patient_birth_date, patient_sex
        ds.AccessionNumber, ds.StudyID, ds.StudyDescription = accession_number, study_id, study_description
        ds.SeriesDescription, ds.SeriesNumber = series_description, series_number
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(thickness)
        ds.SliceLocation = _ds(float(np.dot(position, np.cross(orientation[:3], orientation[3:]))))
        path = out / f"MR{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(pixels: np.ndarray, index: int) -> Dataset:
    """The per-slice attributes of an MR Image Storage instance (PS3.3 A.4) other than identity and geometry."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]  # Colin27 is an average of 27 acquisitions
    ds.Modality = "MR"
    ds.Manufacturer = "imaging-AI node demonstration"
    ds.ReferringPhysicianName = ""
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "18"
    ds.EchoTime = "10"
    ds.EchoTrainLength = "1"
    ds.FlipAngle = "30"
    ds.MagneticFieldStrength = "1.5"
    ds.InstanceNumber = index + 1
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "1600", "3200"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the slices into")
    parser.add_argument("--nifti", type=Path, default=CH2)
    parser.add_argument("--step", type=int, default=1, help="average this many slices into one (default 1)")
    parser.add_argument("--patient-id", default="DEMO-MR-0001")
    parser.add_argument("--patient-name", default="Demo^Colin27")
    parser.add_argument("--study-uid", default=None)
    parser.add_argument("--series-uid", default=None)
    parser.add_argument("--accession", default="")
    args = parser.parse_args(argv)
    paths = make_demo_series(args.out, args.nifti, step=args.step, patient_id=args.patient_id,
                             patient_name=args.patient_name, study_instance_uid=args.study_uid,
                             series_instance_uid=args.series_uid, accession_number=args.accession)
    print(f"wrote {len(paths)} MR slices to {args.out}")


if __name__ == "__main__":
    main()
