"""Frames of single-bit pixel data (a BINARY SEG, PS3.3 C.8.20.2) by WADO-RS, the way OHIF loads a SEG frame by
frame: such frames are packed back to back (PS3.5 §8.1.1), so with Rows × Columns not a multiple of 8 every frame
after the first starts inside a byte. Each frame must come out as its own native encoding (packed, LSB first, from
bit 0, padded to a whole byte), and the rendered frame must show that frame."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import ServerProc
from tests.dicomweb.conftest import stow
from tests.dicomweb.test_wado import _parts

ROWS, COLS, FRAMES = 5, 7, 4  # 35 bits a frame: frames 2..4 start at bits 35, 70, 105
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _binary_seg(path: Path) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(7)
    frames = (rng.random((FRAMES, ROWS, COLS)) < 0.4).astype(np.uint8)
    frames[:, 0, 0] = 1  # every frame starts with a set bit: an off-by-one bit offset shows
    packed = np.packbits(frames.ravel(), bitorder="little").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SEG_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SEG_STORAGE, generate_uid()
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BITS-1", "Bits^One", "SEG"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20260101", "120000", 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, FRAMES
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = packed + b"\x00" * (len(packed) % 2)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return ds, frames


def test_binary_seg_frames_are_each_packed_from_bit_zero(web: ServerProc, tmp_path: Path) -> None:
    ds, frames = _binary_seg(tmp_path / "seg.dcm")
    assert stow(web, [(tmp_path / "seg.dcm").read_bytes()]).status_code == 200
    base = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    ohif = "multipart/related; type=application/octet-stream; transfer-syntax=*"  # what OHIF 3.13 sends
    with web.client() as http:
        r = http.get(f"{base}/frames/1,2,3,4", headers={"Accept": ohif})
        assert r.status_code == 200, r.text
        parts = _parts(r)
        assert len(parts) == FRAMES
        for n, (headers, data) in enumerate(parts):
            assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
            assert data == np.packbits(frames[n].ravel(), bitorder="little").tobytes()  # 5 bytes, 5 padding bits
            assert len(data) == (ROWS * COLS + 7) // 8
        png = http.get(f"{base}/frames/3/rendered", headers={"Accept": "image/png"})
        assert png.status_code == 200, png.text
        shown = np.asarray(Image.open(io.BytesIO(png.content)).convert("L"))
        assert shown.shape == (ROWS, COLS)
        assert np.array_equal(shown > 127, frames[2].astype(bool))
