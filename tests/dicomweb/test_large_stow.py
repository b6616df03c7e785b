"""A large STOW-RS upload streams to disk: the server's memory does not grow by the upload's size."""

from __future__ import annotations

import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.conftest import ServerProc
from tests.dicomweb.conftest import client, referenced_uids

ROWS = COLS = 512
FRAMES = 240  # 512 × 512 × 2 bytes × 240 frames = 120 MiB of pixel data
CHUNK = 1 << 20


def write_large_instance(path: Path) -> Dataset:
    """A synthetic multi-frame MR written without holding its pixel data in memory."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BIG1", "Large^Upload", "MR"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.save_as(path, enforce_file_format=True)
    frame = bytes(range(256)) * (ROWS * COLS * 2 // 256)
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, len(frame) * FRAMES))
        for _ in range(FRAMES):
            f.write(frame)
    return ds


def test_large_stow_streams_without_growing_server_memory(web: ServerProc, tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    ds = write_large_instance(path)
    size = path.stat().st_size
    assert size > 100 * CHUNK
    assert web.proc is not None
    proc = psutil.Process(web.proc.pid)
    baseline = proc.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)

    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        r = httpx.post(
            f"{web.dicomweb_url}/studies",
            content=body(),
            headers={"Authorization": f"Bearer {web.token()}",
                     "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            timeout=60,
        )
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert referenced_uids(r.json()) == [ds.SOPInstanceUID]
    growth = peak - baseline
    assert growth < 40 * CHUNK, f"server RSS grew by {growth / CHUNK:.0f} MiB for a {size / CHUNK:.0f} MiB upload"
    assert elapsed < 20
    (frame,) = client(web).retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                                    [FRAMES])
    assert frame == bytes(range(256)) * (ROWS * COLS * 2 // 256)
