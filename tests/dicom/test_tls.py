"""DICOM over TLS (dicom.tls, PS3.15 Annex B): dcmtk's echoscu/storescu with the test CA's client
certificate get through; a plain-TCP association and one without a client certificate are refused, and the
listener goes on serving."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from tests.support import make_test_pki, require_tool


@pytest.fixture
def tls_node(server_factory: Any, tmp_path: Path) -> tuple[Any, dict[str, Path]]:
    pki = make_test_pki(tmp_path / "pki")
    srv = server_factory({"INTEROP_DICOM__TLS__CERT_FILE": str(pki["server_cert"]),
                          "INTEROP_DICOM__TLS__KEY_FILE": str(pki["server_key"]),
                          "INTEROP_DICOM__TLS__CA_FILE": str(pki["ca"]),
                          "INTEROP_DICOM__TLS__REQUIRE_CLIENT_CERT": "true"})
    return srv, pki


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TCP_NODELAY": "1"})


def _tls_args(pki: dict[str, Path], with_cert: bool) -> list[str]:
    ident = ["+tls", str(pki["client_key"]), str(pki["client_cert"])] if with_cert else ["+tla"]
    return [*ident, "+cf", str(pki["ca"]), "-rc"]  # -rc: the server must present a certificate the CA issued


def test_echo_and_store_over_mutual_tls(tls_node: tuple[Any, dict[str, Path]]) -> None:
    srv, pki = tls_node
    echo = _run(require_tool("echoscu"), *_tls_args(pki, True), "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port))
    assert echo.returncode == 0, echo.stderr
    store = _run(require_tool("storescu"), *_tls_args(pki, True), "-aec", "INTEROP", "127.0.0.1",
                 str(srv.dicom_port), str(get_testdata_file("CT_small.dcm")))
    assert store.returncode == 0, store.stderr
    with srv.client() as http:
        assert len(http.get("/dicomweb/instances").json()) == 1


def test_plain_and_certificateless_associations_are_refused(tls_node: tuple[Any, dict[str, Path]]) -> None:
    srv, pki = tls_node
    echoscu = require_tool("echoscu")
    plain = _run(echoscu, "-to", "5", "-ta", "5", "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port))
    assert plain.returncode != 0
    anonymous = _run(echoscu, *_tls_args(pki, False), "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port))
    assert anonymous.returncode != 0
    again = _run(echoscu, *_tls_args(pki, True), "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port))
    assert again.returncode == 0, again.stderr  # still serving
