"""C-ECHO and C-STORE against the running node with dcmtk's echoscu/storescu (PS3.4 Annex A, B)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy
import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from interop.store.dicomfile import check_complete, dataset_layout
from tests.conftest import ServerProc
from tests.dicom.peers import (
    association,
    blob_files,
    contexts_for,
    counts,
    dataset_bytes,
    echoscu,
    index,
    send,
    send_files,
    store_responses,
    storescu,
    storescu_as_received,
    temp_files,
)
from tests.support import sample_file

pytestmark = pytest.mark.peer


def _sop_uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_echoscu_answers_success(server: ServerProc) -> None:
    out = echoscu(server)
    assert out.returncode == 0, out.stderr
    assert "Received Echo Response (Success)" in out.stdout + out.stderr


def test_storescu_studies_indexed_with_their_series(server: ServerProc, dicomdir_study: list[Path]) -> None:
    out = storescu(server, dicomdir_study[0].parents[1])
    assert out.returncode == 0, out.stderr
    assert store_responses(out.stdout + out.stderr) == ["Success"] * len(dicomdir_study)

    expected: dict[str, tuple[set[str], int]] = {}
    for p in dicomdir_study:
        h = dcmread(p, stop_before_pixels=True)
        series, n = expected.get(str(h.StudyInstanceUID), (set(), 0))
        expected[str(h.StudyInstanceUID)] = (series | {str(h.SeriesInstanceUID)}, n + 1)
    assert len(expected) == 2, "patient 77654033 has a CR and a CT study"
    with server.client() as http:
        for study_uid, (series, n) in expected.items():
            state = http.get(f"/api/studies/{study_uid}").json()
            assert (state["series_count"], state["instance_count"]) == (len(series), n)
    rows = index(server)
    assert {r.sop_uid for r in rows} == _sop_uids(dicomdir_study)
    assert {r.calling_ae for r in rows} == {"STORESCU"}


def test_storescu_all_patients_indexed_and_resend_changes_nothing(
    server: ServerProc, dicomdir_all: list[Path]
) -> None:
    headers = [dcmread(p, stop_before_pixels=True) for p in dicomdir_all]
    expected = (
        len({str(h.StudyInstanceUID) for h in headers}),
        len({str(h.SeriesInstanceUID) for h in headers}),
        len(dicomdir_all),
    )
    first = storescu(server, *dicomdir_all)
    assert first.returncode == 0, first.stderr
    assert store_responses(first.stdout + first.stderr) == ["Success"] * len(dicomdir_all)
    assert counts(server) == expected
    files_before = blob_files(server)
    rows_before = sorted(index(server), key=lambda r: r.sop_uid)

    again = storescu(server, *dicomdir_all)
    assert store_responses(again.stdout + again.stderr) == ["Success"] * len(dicomdir_all)
    assert counts(server) == expected
    assert blob_files(server) == files_before
    assert sorted(index(server), key=lambda r: r.sop_uid) == rows_before
    assert temp_files(server) == []


@pytest.mark.parametrize(
    "name",
    [
        "RG1_UNCI.dcm",  # 7 MB uncompressed CR: many P-DATA PDUs
        "JPEG2000.dcm",  # JPEG 2000 (lossy)
        "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000 lossless, enhanced MR multi-frame
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "SC_rgb_rle.dcm",  # RLE lossless
        "liver.dcm",  # Segmentation
        "test-SR.dcm",  # Comprehensive SR
    ],
)
def test_storescu_file_stored_as_received(server: ServerProc, name: str) -> None:
    src = sample_file(name)
    out = storescu_as_received(server, src)
    assert store_responses(out.stdout + out.stderr) == ["Success"], out.stdout + out.stderr
    sent_ts = str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)

    (row,) = index(server)
    assert row.sop_uid == str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    assert row.transfer_syntax_uid == sent_ts
    assert str(dcmread(row.blob_path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == sent_ts
    check_complete(row.blob_path, row.dataset_offset, row.transfer_syntax_uid)
    # storescu re-encodes what it reads (it pads odd-length fragments of some of these files and drops
    # trailing padding), so compare content here; byte-for-byte storage is the next test's.
    stored, original = dcmread(row.blob_path), dcmread(src)
    skip = {"PixelData", "DataSetTrailingPadding"}
    assert [e for e in stored if e.keyword not in skip] == [e for e in original if e.keyword not in skip]
    if "PixelData" in original:
        assert numpy.array_equal(stored.pixel_array, original.pixel_array)


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm", "liver.dcm"])
def test_raw_c_store_data_set_stored_byte_for_byte(server: ServerProc, name: str) -> None:
    """pynetdicom streams the file's data set bytes unchanged; the node must keep exactly those bytes."""
    src = sample_file(name)
    assert send(server, src) == [0x0000]
    (row,) = index(server)
    assert dataset_bytes(row.blob_path) == dataset_bytes(src)


def _with_un_sequence(tmp_path: Path) -> Path:
    """CT_small's attributes below group 0029, then a private UN element of undefined length: a sequence
    that PS3.5 §6.2.2 says is encoded Implicit VR Little Endian inside this Explicit VR data set."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for elem in list(ds):
        if elem.tag.group >= 0x0029:
            del ds[elem.tag]
    path = tmp_path / "un-sequence.dcm"
    ds.save_as(path)
    item_element = struct.pack("<HHL", 0x0029, 0x1001, 4) + b"ABCD"  # implicit VR: tag, 4-byte length
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + item_element + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    creator = struct.pack("<HH", 0x0029, 0x0010) + b"LO" + struct.pack("<H", 4) + b"ACME"
    un = struct.pack("<HH", 0x0029, 0x1010) + b"UN\0\0" + struct.pack("<L", 0xFFFFFFFF) + item
    path.write_bytes(path.read_bytes() + creator + un + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    return path


def test_c_store_un_sequence_of_undefined_length_stored(server: ServerProc, tmp_path: Path) -> None:
    path = _with_un_sequence(tmp_path)
    assert send(server, path) == [0x0000]
    (row,) = index(server)
    assert dataset_bytes(row.blob_path) == dataset_bytes(path)


def test_c_store_truncated_inside_un_sequence_refused_c210(server: ServerProc, tmp_path: Path) -> None:
    path = _with_un_sequence(tmp_path)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-12])  # inside the item: no item or sequence delimiter
    with association(server, contexts_for(path)) as assoc:
        assert send_files(assoc, cut) == [0xC210]
    assert counts(server) == (0, 0, 0)


def test_c_store_deflated_data_set_stored_and_truncated_refused(server: ServerProc, tmp_path: Path) -> None:
    """Deflated Explicit VR Little Endian (PS3.5 §A.5): stored as received; cut short, refused C210 (a cut
    deflate stream inflates without any zlib error, so the end of the stream must be checked)."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    whole = tmp_path / "deflated.dcm"
    ds.save_as(whole, enforce_file_format=True)
    offset, _ = dataset_layout(whole)
    cut_stream = tmp_path / "deflated-cut-stream.dcm"
    cut_stream.write_bytes(whole.read_bytes()[:-2000])
    # A whole deflate stream of a data set that was cut inside its pixel data before deflating.
    plain = zlib.decompress(whole.read_bytes()[offset:], -zlib.MAX_WBITS)
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    cut_inside = tmp_path / "deflated-cut-inside.dcm"
    cut_inside.write_bytes(whole.read_bytes()[:offset] + packer.compress(plain[:-5000]) + packer.flush())
    with association(server, contexts_for(whole)) as assoc:
        assert send_files(assoc, cut_stream, cut_inside, whole) == [0xC210, 0xC210, 0x0000]
    (row,) = index(server)
    assert row.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert dataset_bytes(row.blob_path) == dataset_bytes(whole)
