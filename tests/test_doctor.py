"""``interop doctor`` and ``interop conformance``: run as a site engineer would, against a running node and
peers that answer or don't. The node plays its own PACS (C-ECHO), DICOMweb service (QIDO-RS) and EHR
(CapabilityStatement); a closed port and a wrong token are the failures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.config import Settings
from interop.conformance import RESULT_SOP_CLASSES, dicom_conformance_statement
from tests.conftest import ServerProc
from tests.support import free_port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("doctor") / "node").start()
    try:
        yield srv
    finally:
        srv.stop()


def _doctor(node: ServerProc, destinations: list[dict[str, object]], *args: str) -> tuple[int, dict[str, str]]:
    env = {**node.env, "INTEROP_WRITEBACK__DESTINATIONS": json.dumps(destinations)}
    out = subprocess.run([sys.executable, "-m", "interop", "doctor", "--timeout", "3", *args], env=env,
                         capture_output=True, text=True, timeout=120)
    lines = {}
    for line in out.stdout.splitlines():
        label, _, rest = line.partition("  ")
        if label.strip() in ("OK", "FAIL", "SKIP"):
            name = rest.strip().split("  ")[0]
            lines[name] = label.strip() + " " + rest.strip()[len(name):].strip()
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, lines


def test_doctor_passes_when_every_peer_answers(node: ServerProc) -> None:
    token = node.token("system/*.rs")
    rc, lines = _doctor(node, [
        {"kind": "dicom", "name": "pacs", "ae_title": "INTEROP", "host": "127.0.0.1", "port": node.dicom_port,
         "calling_ae": "AI_NODE"},
        {"kind": "dicomweb", "name": "web", "url": f"{node.base_url}/dicomweb",
         "auth": {"kind": "bearer", "token": token}},
        {"kind": "fhir", "name": "ehr", "base_url": f"{node.base_url}/fhir"},
        {"kind": "webhook", "name": "pager", "url": "http://127.0.0.1:9/critical"},
    ])
    assert rc == 0, lines
    assert lines["database"].startswith("OK") and "schema at 0" in lines["database"]
    assert lines["storage"].startswith("OK") and "GiB free" in lines["storage"]
    assert lines["dicom listener INTEROP"].startswith("OK C-ECHO")
    assert lines["dicom destination pacs"] == \
        f"OK C-ECHO to INTEROP@127.0.0.1:{node.dicom_port} as AI_NODE: success"
    web = lines["dicomweb destination web"]
    assert web.startswith("OK QIDO-RS") and "HTTP 200" in web
    assert lines["fhir destination ehr"].startswith("OK FHIR 4.0.1 at")
    assert lines["webhook destination pager"].startswith("SKIP not called")


def test_doctor_names_each_failure_and_exits_1(node: ServerProc) -> None:
    closed = free_port()
    rc, lines = _doctor(node, [
        {"kind": "dicom", "name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": closed},
        {"kind": "dicomweb", "name": "web", "url": f"{node.base_url}/dicomweb",
         "auth": {"kind": "bearer", "token": "not-a-token"}},
        {"kind": "fhir", "name": "ehr", "base_url": f"http://127.0.0.1:{closed}/fhir"},
    ])
    assert rc == 1
    assert lines["dicom destination pacs"].startswith("FAIL") and str(closed) in lines["dicom destination pacs"]
    assert lines["dicomweb destination web"].startswith("FAIL") and "HTTP 401" in lines["dicomweb destination web"]
    assert lines["fhir destination ehr"].startswith("FAIL") and "could not reach" in lines["fhir destination ehr"]
    assert lines["database"].startswith("OK")


def test_doctor_without_a_running_node_says_so(tmp_path: Path) -> None:
    env = {"INTEROP_DATA_DIR": str(tmp_path / "none"), "INTEROP_DICOM__PORT": str(free_port()),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "interop", "doctor", "--timeout", "2"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "FAIL  database" in out.stdout and "interop migrate" in out.stdout  # nothing migrated yet
    assert "is `interop serve` running?" in out.stdout


def test_dicom_conformance_statement_follows_the_configuration(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dicom={"ae_title": "AI_NODE", "port": 104, "allowed_aes": ["PACS1"],
                                                  "duplicate_policy": "reject"},
                        writeback={"destinations": [{"kind": "dicom", "name": "pacs", "ae_title": "PACS1",
                                                     "host": "pacs.example", "port": 11112}]})
    text = dicom_conformance_statement(settings, version="9.9")
    assert text.startswith("# DICOM Conformance Statement: interop imaging-AI node 9.9")
    assert "**AI_NODE**, listens on TCP port 104" in text and "only the calling AE titles PACS1" in text
    assert "| 0111 | Failure |" in text and "| B006 |" not in text  # the configured duplicate policy
    assert "| A700 | Refused |" in text and "| 1.2.840.10008.5.1.4.1.1.2 |" in text  # CT Image Storage
    assert "| pacs | PACS1 | pacs.example:11112 | INTEROP | no |" in text
    for uid in RESULT_SOP_CLASSES:
        assert uid in text
    assert "| PatientID | STUDY | text |" in text and "plain TCP" in text
    default = dicom_conformance_statement(Settings(data_dir=tmp_path), version="9.9")
    assert "| B006 | Warning |" in default and "none is" in default and "any calling AE title" in default


def test_conformance_cli_writes_both(node: ServerProc, tmp_path: Path) -> None:
    for what, name in (("dicom", "dcs.md"), ("fhir", "cap.json")):
        out = subprocess.run([sys.executable, "-m", "interop", "conformance", what, "--out", str(tmp_path / name)],
                             env=node.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert "C-STORE response statuses" in (tmp_path / "dcs.md").read_text()
    cap = json.loads((tmp_path / "cap.json").read_text())
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    assert {r["type"] for r in cap["rest"][0]["resource"]} >= {"Patient", "Observation", "DiagnosticReport"}
