"""Fixtures for DICOMweb tests: a node reachable by dicomweb-client, raw STOW, and a node loaded once per module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.conftest import ServerProc
from tests.support import sample_file

#: Files stored in the module-scoped ``loaded`` node besides the dicomdirtests study set.
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "emri_small.dcm", "US1_J2KR.dcm", "test-SR.dcm")


def with_public_url(srv: ServerProc) -> ServerProc:
    # dicomweb-client sends "Host: <host>" without the port, so URLs the node derives from the request would
    # lose it; a deployment behind a proxy sets http.public_url the same way.
    srv.extra_env["INTEROP_HTTP__PUBLIC_URL"] = srv.base_url
    return srv


@pytest.fixture
def web(server_factory: type) -> ServerProc:
    """A fresh node (function scope) whose URLs carry its port."""
    srv: ServerProc = server_factory(start=False)  # type: ignore[operator]
    return with_public_url(srv).start()


def client(srv: ServerProc, scope: str = "system/*.cruds") -> DICOMwebClient:
    return DICOMwebClient(url=srv.dicomweb_url, headers={"Authorization": f"Bearer {srv.token(scope)}"})


def multipart(parts: list[bytes], boundary: str, part_type: str = "application/dicom") -> bytes:
    out = b""
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stow(
    srv: ServerProc, parts: list[bytes], *, study: str | None = None, token: str | None = None,
    content_type: str | None = None, body: bytes | None = None,
) -> httpx.Response:
    """POST a STOW-RS request with exactly the bytes given (no re-encoding, unlike dicomweb-client)."""
    boundary = uuid.uuid4().hex
    url = f"{srv.dicomweb_url}/studies" + (f"/{study}" if study else "")
    headers = {
        "Authorization": f"Bearer {token or srv.token()}",
        "Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    return httpx.post(url, content=multipart(parts, boundary) if body is None else body, headers=headers, timeout=120)


def sample_bytes(name: str) -> bytes:
    return sample_file(name).read_bytes()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, dicomdir_all: list[Path]) -> Iterator[ServerProc]:
    """One node per module with the 31 dicomdirtests instances and :data:`SAMPLES`, stored as the files are."""
    srv = with_public_url(ServerProc(data_dir=tmp_path_factory.mktemp("loaded") / "node")).start()
    try:
        files = [p.read_bytes() for p in dicomdir_all] + [sample_bytes(n) for n in SAMPLES]
        r = stow(srv, files)
        assert r.status_code == 200, r.text[:1000]
        yield srv
    finally:
        srv.stop()


def failed_reasons(body: dict) -> list[int]:  # type: ignore[type-arg]
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


def referenced_uids(body: dict) -> list[str]:  # type: ignore[type-arg]
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]
