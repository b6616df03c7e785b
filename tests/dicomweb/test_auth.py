"""Every DICOMweb resource needs a token with the right SMART scope (DESIGN promise 4)."""

from __future__ import annotations

import httpx
import pytest
from pydicom import dcmread

from tests.conftest import ServerProc
from tests.dicomweb.conftest import sample_bytes, stow
from tests.support import sample_file


@pytest.fixture(scope="module")
def paths(loaded: ServerProc) -> list[str]:
    ct = dcmread(sample_file("CT_small.dcm"), stop_before_pixels=True)
    inst = f"studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
    return ["studies", "series", "instances", inst, f"{inst}/metadata", f"{inst}/frames/1", f"{inst}/rendered",
            f"studies/{ct.StudyInstanceUID}", f"studies/{ct.StudyInstanceUID}/metadata"]


def test_dicomweb_without_token_is_401(loaded: ServerProc, paths: list[str]) -> None:
    for path in paths:
        r = httpx.get(f"{loaded.dicomweb_url}/{path}")
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(f"{loaded.dicomweb_url}/studies", content=b"x",
                   headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'})
    assert r.status_code == 401


def test_dicomweb_token_without_imaging_scope_is_403(loaded: ServerProc, paths: list[str]) -> None:
    token = loaded.token(scope="system/Patient.rs")
    for path in paths:
        r = httpx.get(f"{loaded.dicomweb_url}/{path}", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403, path
        assert r.json()["resourceType"] == "OperationOutcome"
    assert stow(loaded, [sample_bytes("CT_small.dcm")], token=token).status_code == 403


def test_dicomweb_search_scope_searches_but_does_not_read_or_store(loaded: ServerProc, paths: list[str]) -> None:
    token = loaded.token(scope="system/ImagingStudy.s")
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{loaded.dicomweb_url}/studies", headers=auth).status_code == 200
    assert httpx.get(f"{loaded.dicomweb_url}/{paths[4]}", headers=auth).status_code == 403
    assert stow(loaded, [sample_bytes("CT_small.dcm")], token=token).status_code == 403
    reader = {"Authorization": f"Bearer {loaded.token(scope='system/ImagingStudy.r')}"}
    assert httpx.get(f"{loaded.dicomweb_url}/{paths[4]}", headers=reader).status_code == 200
