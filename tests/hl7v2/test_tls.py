"""MLLP over TLS (hl7.tls): a client with the test CA's certificate gets its ACK; a plain TCP client, or a TLS
client without a certificate when one is required, gets nothing stored and the server goes on."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.hl7v2.support import oru
from tests.support import make_test_pki

VT, FS_CR = b"\x0b", b"\x1c\x0d"


def _exchange(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(VT + message + FS_CR)
    data = b""
    while not data.endswith(FS_CR):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def tls_server(server_factory: Any, tmp_path: Path) -> tuple[Any, dict[str, Path]]:
    pki = make_test_pki(tmp_path / "pki")
    srv = server_factory({"INTEROP_HL7__TLS__CERT_FILE": str(pki["server_cert"]),
                          "INTEROP_HL7__TLS__KEY_FILE": str(pki["server_key"]),
                          "INTEROP_HL7__TLS__CA_FILE": str(pki["ca"]),
                          "INTEROP_HL7__TLS__REQUIRE_CLIENT_CERT": "true"})
    return srv, pki


def _client(pki: dict[str, Path], with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    return ctx


def test_mllp_over_mutual_tls_gets_aa(tls_server: tuple[Any, dict[str, Path]]) -> None:
    srv, pki = tls_server
    with socket.create_connection(("127.0.0.1", srv.mllp_port), timeout=10) as raw, \
            _client(pki, True).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        ack = _exchange(tls, oru("TLS1"))
    assert b"MSA|AA|TLS1" in ack


def test_plain_tcp_and_certless_tls_are_refused(tls_server: tuple[Any, dict[str, Path]]) -> None:
    srv, pki = tls_server
    answers: list[bytes] = []
    with socket.create_connection(("127.0.0.1", srv.mllp_port), timeout=10) as plain:
        try:
            answers.append(_exchange(plain, oru("PLAIN1", filler="FIL-PLAIN")))
        except OSError:  # reset: the server spoke TLS, we did not
            answers.append(b"")
    try:
        with socket.create_connection(("127.0.0.1", srv.mllp_port), timeout=10) as raw, \
                _client(pki, False).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            answers.append(_exchange(tls, oru("NOCERT1", filler="FIL-NOCERT")))
    except (ssl.SSLError, OSError):  # TLS 1.3 reports the missing certificate on the first read
        answers.append(b"")
    assert not any(b"MSA" in a for a in answers), answers
    with socket.create_connection(("127.0.0.1", srv.mllp_port), timeout=10) as raw, \
            _client(pki, True).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert b"MSA|AA|TLS2" in _exchange(tls, oru("TLS2", filler="FIL-TLS2"))  # still serving
    with srv.client() as http:
        reports = [e["resource"] for e in http.get("/fhir/DiagnosticReport").json().get("entry", [])]
    assert [i["value"] for r in reports for i in r["identifier"] if i["value"].startswith("FIL-")] == ["FIL-TLS2"]
