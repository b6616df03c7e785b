"""``patient/`` scopes on DICOMweb and the node's own imaging and report API: DICOMweb is the ImagingStudy
compartment, and a study belongs to the FHIR Patient whose identifier value is its DICOM Patient ID (how the
node links them everywhere). A token confined to patient X finds X's studies only (QIDO), reads X's study
(WADO metadata, instances, frames, rendered), and gets 403 with an OperationOutcome for Y's; a token not
confined sees both."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from interop.auth import TokenService
from tests.auth.smart import bearer, system_client
from tests.conftest import ServerProc
from tests.dicom.peers import send


def _study(patient_id: str, folder: Path) -> tuple[Path, dict[str, str]]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = patient_id
    ds.PatientName = f"Test^{patient_id}"
    uids = {"study": generate_uid(), "series": generate_uid(), "sop": generate_uid()}
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uids["study"], uids["series"], uids["sop"]
    ds.file_meta.MediaStorageSOPInstanceUID = uids["sop"]
    path = folder / f"{patient_id}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, uids


@pytest.fixture(scope="module")
def data(node: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("studies")
    mrn_x, mrn_y = f"X{uuid.uuid4().hex[:8]}", f"Y{uuid.uuid4().hex[:8]}"
    x_file, x = _study(mrn_x, folder)
    y_file, y = _study(mrn_y, folder)
    with system_client(node) as c:
        ids = {}
        for key, mrn in (("x", mrn_x), ("y", mrn_y)):
            got = c.post("/fhir/Patient", json={"resourceType": "Patient",
                                                "identifier": [{"system": "urn:mrn", "value": mrn}]})
            assert got.status_code == 201, got.text
            ids[key] = got.json()["id"]
    assert send(node, x_file, y_file) == [0, 0]  # C-STORE: the studies of X and Y
    yield {"x": x, "y": y, "patient_x": ids["x"], "mrn_x": mrn_x, "mrn_y": mrn_y}


def _token(node: ServerProc, scope: str, patient: str | None) -> dict[str, str]:
    tokens = TokenService((node.data_dir / "secret.key").read_bytes().strip(), issuer="interop", audience="interop",
                          ttl=600)
    return bearer(tokens.mint("jane", scope, extra={"patient": patient} if patient else None))


def _forbidden(resp: httpx.Response) -> None:
    assert resp.status_code == 403, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "forbidden"


def test_qido_finds_the_patients_studies_only(node: ServerProc, data: dict[str, Any]) -> None:
    h = _token(node, "patient/ImagingStudy.rs", data["patient_x"])
    base = node.base_url + "/dicomweb"

    def studies(**params: str) -> set[str]:
        got = httpx.get(f"{base}/studies", params=params, headers=h)
        assert got.status_code == 200, got.text
        return {s["0020000D"]["Value"][0] for s in got.json()}

    assert data["x"]["study"] in studies() and data["y"]["study"] not in studies()
    assert studies(PatientID=data["mrn_y"]) == set()  # asking for Y by name finds nothing either
    assert studies(StudyInstanceUID=data["y"]["study"]) == set()
    assert studies(PatientID=data["mrn_x"]) == {data["x"]["study"]}
    series = httpx.get(f"{base}/series", headers=h).json()
    assert {s["0020000E"]["Value"][0] for s in series} == {data["x"]["series"]}
    assert httpx.get(f"{base}/studies/{data['y']['study']}/series", headers=h).json() == []
    assert httpx.get(f"{base}/instances", params={"PatientID": "*"}, headers=h).json()[0]["00080018"]["Value"] \
        == [data["x"]["sop"]]


def test_wado_reads_the_patients_study_and_refuses_another(node: ServerProc, data: dict[str, Any]) -> None:
    h = _token(node, "patient/ImagingStudy.rs", data["patient_x"])
    base = node.base_url + "/dicomweb"
    for key, ok in (("x", True), ("y", False)):
        u = data[key]
        inst = f"{base}/studies/{u['study']}/series/{u['series']}/instances/{u['sop']}"
        for url, accept in ((f"{base}/studies/{u['study']}/metadata", "application/dicom+json"),
                            (f"{base}/studies/{u['study']}", 'multipart/related; type="application/dicom"'),
                            (inst, 'multipart/related; type="application/dicom"'),
                            (f"{inst}/frames/1", 'multipart/related; type="application/octet-stream"'),
                            (f"{inst}/rendered", "image/jpeg"),
                            (f"{base}/studies/{u['study']}/series/{u['series']}/thumbnail", "image/jpeg")):
            got = httpx.get(url, headers={**h, "Accept": accept})
            if ok:
                assert got.status_code == 200, (url, got.status_code, got.text[:300])
            else:
                _forbidden(got)
    # the node's own study API
    assert httpx.get(f"{node.base_url}/api/studies/{data['x']['study']}", headers=h).status_code == 200
    _forbidden(httpx.get(f"{node.base_url}/api/studies/{data['y']['study']}", headers=h))
    _forbidden(httpx.get(f"{node.base_url}/api/studies/events", headers=h))  # the log spans patients


def test_an_unconfined_token_sees_both(node: ServerProc, data: dict[str, Any]) -> None:
    h = _token(node, "user/ImagingStudy.rs", None)
    got = httpx.get(f"{node.base_url}/dicomweb/studies", headers=h)
    found = {s["0020000D"]["Value"][0] for s in got.json()}
    assert {data["x"]["study"], data["y"]["study"]} <= found
    assert httpx.get(f"{node.base_url}/dicomweb/studies/{data['y']['study']}/metadata", headers=h).status_code == 200
    # user/ for imaging but patient/ for Observation: confined where only patient/ scopes grant the access
    h2 = _token(node, "user/ImagingStudy.rs patient/Observation.rs", data["patient_x"])
    assert httpx.get(f"{node.base_url}/dicomweb/studies/{data['y']['study']}/metadata", headers=h2).status_code == 200


def test_a_patient_in_context_that_is_not_stored_reaches_no_study(node: ServerProc, data: dict[str, Any]) -> None:
    h = _token(node, "patient/ImagingStudy.rs", "no-such-patient")
    assert httpx.get(f"{node.base_url}/dicomweb/studies", headers=h).json() == []
    _forbidden(httpx.get(f"{node.base_url}/dicomweb/studies/{data['x']['study']}/metadata", headers=h))
    # no patient claim at all with patient/ scopes: refused
    got = httpx.get(f"{node.base_url}/dicomweb/studies", headers=_token(node, "patient/ImagingStudy.rs", None))
    assert got.status_code == 403
