"""The MLLP listener of a running ``interop serve``, driven by python-hl7's ``mllp_send`` (a real MLLP client)
and by raw sockets for the framing edge cases (HL7 v2.5.1 Ch. 2 §2.9.2; MLLP: Implementation Guide App. C)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from interop.fhir.store import FhirStore
from interop.hl7v2.mllp import Deframer, frame, send
from interop.hl7v2.models import Hl7Message
from interop.store.db import Database
from tests.conftest import ServerProc
from tests.hl7v2.support import database_url, original, oru, sample, segments


class Node:
    """A running server and read access to what it stored."""

    def __init__(self, server: ServerProc) -> None:
        self.server = server
        self.db = Database(database_url(server))
        self.fhir = FhirStore(self.db)

    def send(self, *messages: bytes) -> list[dict[str, list[str]]]:
        return [segments(a) for a in send("127.0.0.1", self.server.mllp_port, list(messages))]

    def rows(self) -> list[Hl7Message]:
        with self.db.reading() as s:
            return list(s.scalars(select(Hl7Message).order_by(Hl7Message.id)))

    def search(self, rtype: str, **params: str) -> list[dict[str, Any]]:
        bundle = self.fhir.search(rtype, list(params.items()))
        return [e["resource"] for e in bundle.get("entry", [])]


@pytest.fixture
def node(server: ServerProc) -> Iterator[Node]:
    n = Node(server)
    yield n
    n.db.dispose()


def _mllp_send(port: int, path: Path) -> str:
    """python-hl7's ``mllp_send`` (``--loose -f FILE``: its stdin mode is broken on Python 3)."""
    exe = Path(sys.executable).with_name("mllp_send")
    out = subprocess.run([str(exe), "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"],
                         capture_output=True, timeout=60, check=True)
    return out.stdout.decode().replace("\r", "\n")


def test_mllp_send_oru_gets_aa_after_its_resources_are_committed(node: Node, tmp_path: Path) -> None:
    path = tmp_path / "oru.hl7"  # in original mode (the sample asks for an accept ACK: test_accept_ack.py)
    path.write_bytes(original(sample("oru_r01_cmp.hl7")))
    out = _mllp_send(node.server.mllp_port, path)
    assert "MSA|AA|LAB20261120-0001" in out
    [row] = node.rows()
    assert (row.ack_code, row.control_id, row.message_type, row.sending_application) == (
        "AA", "LAB20261120-0001", "ORU^R01", "LAB_LIS")
    assert row.raw == original(sample("oru_r01_cmp.hl7")).strip(b"\r")  # what arrived in the frame (mllp_send trims)
    resources = json.loads(row.resources or "[]")
    assert [r.split("/")[0] for r in resources] == ["Patient", "ServiceRequest", "DiagnosticReport"] + \
        ["Observation"] * 8
    [patient] = node.search("Patient", identifier="urn:oid:2.16.840.1.113883.3.9999.2|MRN483920")
    observations = node.search("Observation", patient=f"Patient/{patient['id']}", code="http://loinc.org|2345-7")
    assert len(observations) == 1 and observations[0]["valueQuantity"]["value"] == 142
    assert resources[0] == f"Patient/{patient['id']}"


def test_mllp_send_every_sample_message_type(node: Node, tmp_path: Path) -> None:
    names = ["adt_a01.hl7", "adt_a04.hl7", "adt_a08.hl7", "adt_a08_latin1.hl7", "orm_o01.hl7", "omi_o23.hl7",
             "oru_r01_cbc_a1c.hl7"]
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"\r".join(sample(n).replace(b"\r", b"\n") for n in names if "latin1" not in n))
    out = _mllp_send(node.server.mllp_port, batch)
    assert out.count("MSA|AA|") == len(names) - 1
    assert node.send(original(sample("adt_a08_latin1.hl7")))[0]["MSA"][1] == "AA"
    [johan] = node.search("Patient", identifier="urn:oid:2.16.840.1.113883.3.9999.2|MRN551207")
    assert johan["address"][0]["city"] == "Chatham"  # A08 updated what A01 created
    [order] = node.search("ServiceRequest", subject=f"Patient/{johan['id']}")
    assert order["status"] == "active" and len(order["identifier"]) == 3  # OMI^O23 updated the ORM^O01 order
    [muller] = node.search("Patient", identifier="urn:oid:2.16.840.1.113883.3.9999.2|MRN610044")
    assert muller["name"][0]["family"] == "Müller"


def test_duplicate_control_id_acknowledged_again_and_stored_once(node: Node) -> None:
    first, again = node.send(original(sample("oru_r01_cmp.hl7")), original(sample("oru_r01_cmp.hl7")))
    assert first["MSA"][1:3] == again["MSA"][1:3] == ["AA", "LAB20261120-0001"]
    assert len(node.rows()) == 1
    [obs] = node.search("Observation", code="http://loinc.org|2345-7")
    assert obs["meta"]["versionId"] == "1"  # not applied a second time
    # the same control ID from another sender is another message
    other = original(sample("oru_r01_cmp.hl7")).replace(b"|LAB_LIS|", b"|LAB_POC|", 1)
    assert node.send(other)[0]["MSA"][1] == "AA" and len(node.rows()) == 2


def test_correction_updates_the_earlier_observation(node: Node) -> None:
    node.send(original(sample("oru_r01_cmp.hl7")), original(sample("oru_r01_cmp_corrected.hl7")))
    [obs] = node.search("Observation", code="http://loinc.org|2345-7")
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 124 and obs["meta"]["versionId"] == "2"
    [report] = node.search("DiagnosticReport", identifier="urn:hl7v2:GENLAB|FIL-20261120-0457")
    assert report["status"] == "corrected" and len(report["result"]) == 1


def test_result_is_based_on_the_order_that_came_before_it(node: Node) -> None:
    order = sample("orm_o01.hl7").replace(b"ORD-55101-1^GENHOSP_OE", b"PLC-778812^GENHOSP_OE")
    order = order.replace(b"MRN551207^^^GENHOSP&2.16.840.1.113883.3.9999.2&ISO",
                          b"MRN483920^^^GENHOSP&2.16.840.1.113883.3.9999.2&ISO")
    acks = node.send(order, original(sample("oru_r01_cmp.hl7")))
    assert [a["MSA"][1] for a in acks] == ["AA", "AA"]
    [sr] = node.search("ServiceRequest", identifier="urn:hl7v2:GENHOSP_OE|PLC-778812")
    assert sr["status"] == "active" and sr["code"]["coding"][0]["code"] == "24627-2"  # the order's, kept
    [report] = node.search("DiagnosticReport", identifier="urn:hl7v2:GENLAB|FIL-20261120-0457")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]


@pytest.mark.parametrize(("raw", "ack", "code", "where"), [
    (oru("B1").replace(b"|ORU^R01^ORU_R01|", b"||"), "AR", "101", "MSH^1^9"),
    (oru("B2").replace(b"|ORU^R01^ORU_R01|", b"|SIU^S12|"), "AR", "200", "MSH^1^9^1^1"),
    (oru("B3").replace(b"\rPID|1|", b"\rP@D|1|"), "AE", "100", ""),
    (oru("B4").replace(b"Doe^Jane", "Doe^Zoë".encode("latin-1")), "AE", "102", "PID^1^5"),
    (oru("B5").replace(b"||5.4|", b"||high|"), "AE", "102", "OBX^1^5"),
    (oru("B6").replace(b"MRN900001^^^GENHOSP^MR", b""), "AE", "101", "PID^1^3"),
    (b"this is not HL7", "AR", "100", "MSH^1"),
])
def test_bad_message_gets_error_ack_and_is_kept_without_resources(node: Node, raw: bytes, ack: str, code: str,
                                                                   where: str) -> None:
    [got] = node.send(raw)
    assert got["MSA"][1] == ack
    err = got["ERR"]
    assert err[3].startswith(f"{code}^") and err[3].endswith("^HL70357") and err[4] == "E" and err[8]
    assert err[2] == where
    [row] = node.rows()
    assert (row.ack_code, row.error_code, row.resources) == (ack, code, None) and row.raw == raw
    assert node.search("Observation") == []
    # the same message again gets the same answer; with a control ID it is found, not stored again
    assert node.send(raw)[0]["MSA"][1:3] == got["MSA"][1:3]
    assert len(node.rows()) == (1 if got["MSA"][2] else 2)


def test_frame_cut_off_mid_message_stores_nothing_and_server_stays_up(node: Node) -> None:
    with socket.create_connection(("127.0.0.1", node.server.mllp_port)) as sock:
        sock.sendall(frame(oru("CUT1"))[:-30])
    time.sleep(0.3)
    assert node.rows() == []
    assert node.send(oru("CUT2"))[0]["MSA"][1] == "AA"
    assert [r.control_id for r in node.rows()] == ["CUT2"]


def test_oversized_frame_is_refused_and_connection_goes_on(server_factory: type) -> None:
    srv = server_factory({"INTEROP_HL7__MAX_MESSAGE_BYTES": "4096"})  # type: ignore[operator]
    n = Node(srv)
    big = oru("BIG1") + b"NTE|1|L|" + b"x" * 10000 + b"\r"
    too_big, fine = n.send(big, oru("OK1"))
    assert too_big["MSA"][1:3] == ["AR", "BIG1"] and "exceeds" in too_big["ERR"][8]
    assert fine["MSA"][1] == "AA" and [r.control_id for r in n.rows()] == ["OK1"]
    n.db.dispose()


def test_many_connections_at_once(node: Node) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def burst(c: int) -> list[str]:
        msgs = [oru(f"PAR{c}-{i}", patient=f"MRN{c:03d}", filler=f"F{c}-{i}") for i in range(10)]
        return [a["MSA"][1] for a in node.send(*msgs)]

    with ThreadPoolExecutor(8) as pool:
        codes = [c for got in pool.map(burst, range(8)) for c in got]
    assert codes == ["AA"] * 80
    with node.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Hl7Message)) == 80
    assert len(node.search("Patient", _count="100")) == 8


def test_cli_replay_reprocesses_stored_messages(node: Node) -> None:
    node.send(original(sample("oru_r01_cmp.hl7")), oru("R2").replace(b"||5.4|", b"||high|"))
    out = subprocess.run([sys.executable, "-m", "interop", "hl7", "replay"], env=node.server.env,
                         capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.strip().splitlines()
    assert [ln.split("\t")[4][:2] for ln in lines] == ["AA", "AE"]
    rows = node.rows()
    assert [r.replays for r in rows] == [1, 1] and rows[0].ack_code == "AA"
    [obs] = node.search("Observation", code="http://loinc.org|2345-7")
    assert obs["valueQuantity"]["value"] == 142  # one Observation still: the replay updated it in place


def test_pipelined_frames_on_one_connection_are_applied_and_answered_in_order(node: Node) -> None:
    msgs = [oru(f"PIPE{i}", patient=f"MRN{i % 3:03d}", filler=f"PF{i}") for i in range(20)]
    msgs[7] = msgs[3]  # sent again before its ACK came back
    msgs[12] = oru("PIPE-FIX", patient="MRN000", filler="PF0", value="6.1", status="C")  # corrects PIPE0
    deframer = Deframer(1 << 20)
    acks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", node.server.mllp_port), timeout=30) as sock:
        sock.sendall(b"".join(frame(m) for m in msgs))  # all at once: they arrive in one or a few reads
        while len(acks) < len(msgs):
            data = sock.recv(65536)
            assert data, "connection closed before every ACK came"
            acks += [a for a in deframer.feed(data) if isinstance(a, bytes)]
    got = [segments(a)["MSA"][1:3] for a in acks]
    assert got == [["AA", segments(m)["MSH"][10]] for m in msgs]
    stored = [r.control_id for r in node.rows()]
    assert stored == [segments(m)["MSH"][10] for i, m in enumerate(msgs) if i != 7]  # in the order sent, once
    [obs] = node.search("Observation", identifier="urn:hl7v2:GENLAB|PF0/2093-3")
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 6.1 and obs["meta"]["versionId"] == "2"
