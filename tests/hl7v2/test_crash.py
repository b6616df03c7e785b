"""SIGKILL the node during a burst of ORU^R01 messages: every message that got ``AA`` is there after the
restart, with its resources (DESIGN promise 1), and sending the rest again stores each once (promise 2).
The same in enhanced mode (MSH-15/16 ``AL|NE``): every message answered ``CA`` (kept, its resources written
after the ACK) gets its resources after the restart, once.

Three connections send at once, so the node commits their messages in shared groups
(``interop/hl7v2/group.py``); one of them pipelines (up to ``WINDOW`` messages unacknowledged), so groups
also hold several messages of one connection when the node is killed."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from sqlalchemy import func, select

from interop.fhir.store import FhirStore
from interop.hl7v2.mllp import Deframer, frame
from interop.hl7v2.models import Hl7Message
from interop.store.db import Database
from tests.conftest import ServerProc
from tests.hl7v2.support import database_url, oru, segments
from tests.support import wait_for

N_PER_CONNECTION = 150
CONNECTIONS = 3
KILL_AFTER = 120
WINDOW = 8  # messages connection 0 keeps in flight


def _burst(port: int, c: int, acked: set[str], lock: threading.Lock, server: ServerProc,
           out_of_order: list[str], acks: str) -> None:
    """Send messages on one connection until the node dies; record each control ID acknowledged AA (and any
    ACK that does not answer the oldest message waiting for one)."""
    deframer = Deframer(1 << 20)
    window = WINDOW if c == 0 else 1
    sent = 0
    pending: list[bytes] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for i in range(N_PER_CONNECTION):
                while sent < min(N_PER_CONNECTION, i + window):
                    sock.sendall(frame(oru(f"K{c}-{sent}", patient=f"MRN{c}{sent:04d}", filler=f"KF{c}-{sent}",
                                           acks=acks)))
                    sent += 1
                while not pending:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pending += [a for a in deframer.feed(data) if isinstance(a, bytes)]
                ack = segments(pending.pop(0))
                if ack["MSA"][2] != f"K{c}-{i}":
                    out_of_order.append(f"K{c}-{i} answered by an ACK for {ack['MSA'][2]}")
                if ack["MSA"][1] in ("AA", "CA"):
                    with lock:
                        acked.add(ack["MSA"][2])
                        if len(acked) == KILL_AFTER:
                            server.kill()
    except OSError:
        return


@pytest.mark.parametrize(("backend", "acks"), [("sqlite", ""), ("postgresql", ""), ("sqlite", "AL|NE")],
                         ids=["sqlite-AA", "postgresql-AA", "sqlite-CA"])
def test_sigkill_during_oru_burst_loses_no_acknowledged_message(server_factory: type, backend: str, acks: str,
                                                                request: pytest.FixtureRequest) -> None:
    env = {"INTEROP_DATABASE_URL": request.getfixturevalue("postgres_url")} if backend == "postgresql" else {}
    code = "CA" if acks else "AA"
    server: ServerProc = server_factory(env)  # type: ignore[operator]
    acked: set[str] = set()
    out_of_order: list[str] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_burst, args=(server.mllp_port, c, acked, lock, server, out_of_order, acks))
               for c in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert server.proc is None and len(acked) >= KILL_AFTER, "the node was not killed mid-burst"
    assert not out_of_order
    db = Database(database_url(server))
    try:
        if acks:  # at the kill, accepted messages were still waiting for their resources
            with db.reading() as s:
                assert s.scalar(select(func.count()).where(Hl7Message.pending)), "nothing was pending at the kill"
        server.start()
        # after the restart the applier writes what was pending, in arrival order, once
        wait_for(lambda: _pending(db) == 0, timeout=120, what="accepted messages applied after the restart")
        with db.reading() as s:
            rows = {r.control_id: r for r in s.scalars(select(Hl7Message))}
        missing = acked - set(rows)
        assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
        assert all(r.ack_code == code and r.error_code is None for r in rows.values())
        fhir = FhirStore(db)
        for cid in sorted(acked)[:: 1 if acks else max(1, len(acked) // 20)]:
            resources = json.loads(rows[cid].resources or "[]")
            assert len(resources) == 5  # Patient, ServiceRequest (OBR-2), DiagnosticReport, 2 Observations
            for ref in resources:
                rtype, rid = ref.split("/")
                assert fhir.read(rtype, rid).resource["resourceType"] == rtype
        # the sender sends again whatever it had no AA for: each message ends up stored exactly once
        resend = [oru(f"K{c}-{i}", patient=f"MRN{c}{i:04d}", filler=f"KF{c}-{i}", acks=acks)
                  for c in range(CONNECTIONS) for i in range(N_PER_CONNECTION) if f"K{c}-{i}" not in acked][:60]
        from interop.hl7v2.mllp import send

        assert {segments(a)["MSA"][1] for a in send("127.0.0.1", server.mllp_port, resend)} == {code}
        wait_for(lambda: _pending(db) == 0, timeout=60, what="nothing pending")
        with db.reading() as s:
            ids = list(s.scalars(select(Hl7Message.control_id)))
        assert len(ids) == len(set(ids))
        obs = fhir.search("Observation", [("_count", "1")])
        assert obs["total"] == 2 * len(ids)
    finally:
        db.dispose()


def _pending(db: Database) -> int:
    with db.reading() as s:
        return int(s.scalar(select(func.count()).where(Hl7Message.pending)) or 0)
