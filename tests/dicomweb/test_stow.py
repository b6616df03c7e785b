"""STOW-RS against a running node (PS3.18 §10.5): statuses, FailedSOPSequence, idempotency, readiness."""

from __future__ import annotations

import io
import time
from collections import defaultdict
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.conftest import ServerProc
from tests.dicomweb.conftest import client, failed_reasons, referenced_uids, sample_bytes, stow


def _blob_count(srv: ServerProc) -> int:
    return sum(1 for p in (srv.data_dir / "blobs" / "objects").rglob("*") if p.is_file())


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_stow_study_then_qido_counts_match(web: ServerProc, dicomdir_study: list[Path]) -> None:
    datasets = [dcmread(p) for p in dicomdir_study]
    response = client(web).store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    assert "FailedSOPSequence" not in response

    series_by_study: dict[str, set[str]] = defaultdict(set)
    for ds in datasets:
        series_by_study[ds.StudyInstanceUID].add(ds.SeriesInstanceUID)
    qido = client(web)
    studies = qido.search_for_studies(search_filters={"PatientID": "77654033"})
    assert {s["0020000D"]["Value"][0] for s in studies} == set(series_by_study)
    for study in studies:
        uid = study["0020000D"]["Value"][0]
        assert study["00201206"]["Value"] == [len(series_by_study[uid])]
        n = sum(1 for ds in datasets if ds.StudyInstanceUID == uid)
        assert study["00201208"]["Value"] == [n]
        assert len(qido.search_for_instances(study_instance_uid=uid)) == n
    assert len(qido.search_for_series()) == sum(len(s) for s in series_by_study.values())


def test_stow_same_files_again_changes_nothing(web: ServerProc, dicomdir_study: list[Path]) -> None:
    parts = [p.read_bytes() for p in dicomdir_study]
    first = stow(web, parts)
    blobs = _blob_count(web)
    again = stow(web, parts)
    assert (first.status_code, again.status_code) == (200, 200)
    assert sorted(referenced_uids(again.json())) == sorted(referenced_uids(first.json()))
    assert _blob_count(web) == blobs == len(parts)
    assert len(client(web).search_for_instances()) == len(parts)


def test_stow_part_that_is_not_dicom_fails_c210_and_the_rest_is_stored(web: ServerProc) -> None:
    ct = dcmread(io.BytesIO(sample_bytes("CT_small.dcm")))
    r = stow(web, [sample_bytes("CT_small.dcm"), b"this is not a DICOM file at all" * 10])
    assert r.status_code == 202
    body = r.json()
    assert failed_reasons(body) == [0xC210]
    assert referenced_uids(body) == [ct.SOPInstanceUID]
    assert body["00081199"]["Value"][0]["00081190"]["Value"][0].endswith(f"/instances/{ct.SOPInstanceUID}")
    assert body["00081190"]["Value"][0] == f"{web.dicomweb_url}/studies/{ct.StudyInstanceUID}"
    assert httpx.get(f"{web.base_url}/healthz").status_code == 200
    assert len(client(web).search_for_instances()) == 1


def test_stow_truncated_instance_fails_c210_with_its_uids(web: ServerProc) -> None:
    data = sample_bytes("CT_small.dcm")
    ct = dcmread(io.BytesIO(data))
    r = stow(web, [data[: len(data) - 1000]])
    assert r.status_code == 409
    body = r.json()
    assert failed_reasons(body) == [0xC210]
    item = body["00081198"]["Value"][0]
    assert item["00081155"]["Value"] == [ct.SOPInstanceUID]
    assert item["00081150"]["Value"] == [ct.SOPClassUID]
    assert "00081199" not in body
    assert client(web).search_for_instances() == []
    assert _blob_count(web) == 0


def test_stow_instance_without_sop_instance_uid_fails_a900(web: ServerProc) -> None:
    ds = dcmread(io.BytesIO(sample_bytes("MR_small.dcm")))
    del ds.SOPInstanceUID
    r = stow(web, [_encode(ds)])
    assert r.status_code == 409
    assert failed_reasons(r.json()) == [0xA900]


def test_stow_to_study_url_refuses_instance_of_another_study(web: ServerProc) -> None:
    ct = dcmread(io.BytesIO(sample_bytes("CT_small.dcm")))
    mr = dcmread(io.BytesIO(sample_bytes("MR_small.dcm")))
    r = stow(web, [sample_bytes("CT_small.dcm"), sample_bytes("MR_small.dcm")], study=ct.StudyInstanceUID)
    assert r.status_code == 202
    body = r.json()
    assert referenced_uids(body) == [ct.SOPInstanceUID]
    assert failed_reasons(body) == [0xA900]
    assert body["00081198"]["Value"][0]["00081155"]["Value"] == [mr.SOPInstanceUID]
    only_other = stow(web, [sample_bytes("MR_small.dcm")], study=ct.StudyInstanceUID)
    assert only_other.status_code == 409


def test_stow_different_data_set_under_stored_uid_warns_b006(web: ServerProc) -> None:
    ds = dcmread(io.BytesIO(sample_bytes("CT_small.dcm")))
    assert stow(web, [_encode(ds)]).status_code == 200
    ds.PatientName = "Changed^Name"
    r = stow(web, [_encode(ds)])
    assert r.status_code == 202
    (item,) = r.json()["00081199"]["Value"]
    assert item["00081196"]["Value"] == [0xB006]
    (study,) = client(web).search_for_studies()
    assert study["00100010"]["Value"][0]["Alphabetic"] == "CompressedSamples^CT1"


def test_stow_wrong_content_type_is_415(web: ServerProc) -> None:
    for content_type in ("application/json", 'multipart/related; type="application/dicom+json"; boundary=x'):
        r = stow(web, [sample_bytes("CT_small.dcm")], content_type=content_type)
        assert r.status_code == 415, content_type
        assert r.json()["resourceType"] == "OperationOutcome"


def test_stow_body_that_is_not_multipart_is_400(web: ServerProc) -> None:
    r = stow(web, [], body=b"just some bytes, no boundary anywhere")
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    no_boundary = stow(web, [sample_bytes("CT_small.dcm")], content_type='multipart/related; type="application/dicom"')
    assert no_boundary.status_code == 400


def test_stow_body_cut_before_close_delimiter_is_400_and_stores_nothing(web: ServerProc) -> None:
    boundary = "cut"
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + sample_bytes("CT_small.dcm")
    r = stow(web, [], body=body, content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert r.status_code == 400
    assert client(web).search_for_instances() == []
    assert not any((web.data_dir / "blobs" / "tmp").iterdir())


def test_stow_study_becomes_ready_after_quiet_period(web: ServerProc) -> None:
    ct = dcmread(io.BytesIO(sample_bytes("CT_small.dcm")))
    assert stow(web, [sample_bytes("CT_small.dcm")]).status_code == 200
    with web.client() as http:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            events = http.get("/api/studies/events", params={"kind": "ready"}).json()
            if any(e["study_uid"] == ct.StudyInstanceUID for e in events):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("study stored by STOW-RS never became ready")
