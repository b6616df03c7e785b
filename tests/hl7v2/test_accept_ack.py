"""Enhanced-mode accept acknowledgments (HL7 v2.5.1 Ch. 2 §2.9.3): a message whose MSH-15 asks for an accept
ACK and whose MSH-16 asks for no application ACK is answered ``CA`` once it is kept durably, and its FHIR
resources are written right after by the applier (``MessageLog.apply_pending``), exactly once and in the
order received; what is wrong with its content is still answered at once (``CE``/``CR`` with ERR).

In-process against SQLite and PostgreSQL here; through the running server (``mllp_send``, metrics) at the end;
the SIGKILL case is in ``test_crash.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from interop.fhir.store import FhirStore
from interop.hl7v2.messages import MessageLog
from interop.hl7v2.models import Hl7Message
from interop.hl7v2.parse import read_header
from interop.store.db import Database
from tests.conftest import ServerProc
from tests.hl7v2.support import MESSAGES, database_url, oru, sample, segments
from tests.hl7v2.test_group_commit import Log
from tests.support import wait_for


@pytest.fixture
def store(database_url: str) -> Iterator[Log]:
    log = Log(database_url)
    log.log.commit_acks = True
    log.log.apply_max_lag = 0.0  # apply_due never waits here (the waiting is tested on its own)
    yield log
    log.db.dispose()


def _oru(cid: str, **kw: str) -> bytes:
    return oru(cid, filler=cid, acks="AL|NE", **kw)


def test_the_acknowledgment_mode_comes_from_msh_15_and_16() -> None:
    assert read_header(_oru("M1")).commit_ack  # AL|NE: accept acknowledgment only
    assert read_header(oru("M2", acks="AL|")).commit_ack
    assert not read_header(oru("M3")).commit_ack  # original mode
    assert not read_header(oru("M4", acks="AL|AL")).commit_ack  # an application ACK is wanted too
    assert not read_header(oru("M5", acks="|AL")).commit_ack


def test_accepted_message_is_kept_pending_then_applied_once(store: Log) -> None:
    [got] = store.record(_oru("A1"))
    assert got.outcome.code == "CA" and got.pending and not got.resources
    [row] = store.rows()
    assert (row.ack_code, row.pending, row.resources, row.error_code) == ("CA", True, None, None)
    assert store.search("Observation") == []  # nothing written before the applier runs
    assert store.log.pending == 1
    assert store.log.apply_pending() == 1
    [row] = store.rows()
    assert not row.pending and row.error_code is None and len(json.loads(row.resources or "[]")) == 5
    assert len(store.search("Observation")) == 2 and store.log.pending == 0
    assert store.log.apply_pending() == 0  # nothing twice


def test_ca_ack_has_no_err_segment_and_echoes_the_control_id(store: Log) -> None:
    ack = segments(store.log.handle(_oru("A2")))
    assert ack["MSA"][1:3] == ["CA", "A2"] and "ERR" not in ack


def test_duplicate_of_an_accepted_message_is_answered_ca_and_kept_once(store: Log) -> None:
    [first] = store.record(_oru("A3"))
    [again] = store.record(_oru("A3"))  # before it was applied
    assert again.duplicate and again.outcome.code == "CA" and again.message_id == first.message_id
    store.log.apply_pending()
    [after] = store.record(_oru("A3"))  # and after
    assert after.duplicate and after.outcome.code == "CA"
    assert len(store.rows()) == 1 and len(store.search("Observation")) == 2


def test_unreadable_message_is_answered_ce_at_once_and_kept_unapplied(store: Log) -> None:
    broken = _oru("E1").replace(b"\rPID|1|", b"\rP@D|1|")  # not a segment
    latin1 = _oru("E2").replace(b"Doe^Jane", "Doe^Zoë".encode("latin-1"))  # not UTF-8
    acks = [segments(store.log.handle(raw)) for raw in (broken, latin1)]
    assert [a["MSA"][1:3] for a in acks] == [["CE", "E1"], ["CE", "E2"]]
    assert acks[0]["ERR"][3].startswith("100^") and acks[1]["ERR"][3].startswith("102^")
    assert acks[1]["ERR"][2] == "PID^1^5"
    rows = store.rows()
    assert [(r.ack_code, r.pending, r.error_code) for r in rows] == [("CE", False, "100"), ("CE", False, "102")]
    assert store.log.apply_pending() == 0 and store.search("DiagnosticReport") == []


def test_content_error_is_found_by_the_applier_and_kept_on_the_row(store: Log) -> None:
    # The sender asked for no application ACK: a value that is not a number is not the accept ACK's business.
    [got] = store.record(_oru("E3").replace(b"||5.4|", b"||high|"))
    assert got.outcome.code == "CA" and got.pending
    assert store.log.apply_pending() == 1
    [row] = store.rows()
    assert (row.ack_code, row.pending, row.error_code, row.error_location) == ("CA", False, "102", "OBX[1]-5")
    assert "high" in (row.error_text or "") and row.resources is None
    assert store.search("DiagnosticReport") == []


def test_unsupported_message_type_is_answered_cr(store: Log) -> None:
    raw = _oru("R1").replace(b"ORU^R01^ORU_R01", b"ZZZ^Z01", 1)
    ack = segments(store.log.handle(raw))
    assert ack["MSA"][1] == "CR" and ack["ERR"][3].startswith("200^")


def test_original_mode_and_application_ack_requests_are_applied_before_aa(store: Log) -> None:
    original, both = store.record(oru("O1", filler="O1"), oru("O2", filler="O2", acks="AL|AL"))
    assert (original.outcome.code, both.outcome.code) == ("AA", "AA")
    assert original.resources and both.resources and store.log.pending == 0
    assert len(store.search("DiagnosticReport")) == 2


def test_switched_off_every_message_is_applied_before_its_ack(store: Log) -> None:
    store.log.commit_acks = False
    [got] = store.record(_oru("S1"))
    assert got.outcome.code == "AA" and got.resources


def test_applied_in_arrival_order_so_a_correction_updates_its_original(store: Log) -> None:
    cmp_ = sample("oru_r01_cmp.hl7")  # AL|NE, as the lab sample came
    store.record(cmp_)
    store.record(sample("oru_r01_cmp_corrected.hl7"))
    assert store.log.apply_pending() == 2
    [obs] = store.search("Observation", code="http://loinc.org|2345-7")
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 124 and obs["meta"]["versionId"] == "2"


def test_store_refusal_at_apply_time_is_kept_on_the_row_and_the_rest_apply(store: Log) -> None:
    store.refuse.add("F2")
    store.record(_oru("F1"), _oru("F2"), _oru("F3"))
    assert store.log.apply_pending() == 3
    rows = store.rows()
    assert [(r.control_id, r.ack_code, r.pending) for r in rows] == [("F1", "CA", False), ("F2", "CA", False),
                                                                      ("F3", "CA", False)]
    assert rows[1].error_code == "102" and "refused by the store" in (rows[1].error_text or "")
    assert rows[1].resources is None and rows[0].resources and rows[2].resources
    assert len(store.search("DiagnosticReport")) == 2  # F2's writes were undone


def test_a_bug_at_apply_time_takes_the_message_out_of_pending_with_207(store: Log) -> None:
    store.crash.add("B2")
    store.record(_oru("B1"), _oru("B2"))
    assert store.log.apply_pending() == 2  # together, then one by one
    rows = store.rows()
    assert [r.pending for r in rows] == [False, False]
    assert rows[0].error_code is None and rows[0].resources
    assert rows[1].error_code == "207" and rows[1].resources is None


def test_replay_of_an_accepted_message_keeps_the_accept_code(store: Log) -> None:
    [got] = store.record(_oru("P1"))
    [(row, outcome)] = list(store.log.replay(ids=[got.message_id]))
    assert outcome.code == "CA" and row.ack_code == "CA" and not row.pending
    assert len(store.search("Observation")) == 2


def test_pending_messages_survive_a_restart_and_are_due_at_once(store: Log) -> None:
    store.record(_oru("R1"), _oru("R2"))
    later = MessageLog(store.db, store.fhir.transaction, store.log.options, commit_acks=True, apply_max_lag=60)
    assert later.load_pending() == 2
    later._last_accept = time.monotonic()  # even while receiving: left by an earlier run, they are overdue
    assert later.apply_due() == 2 and later.pending == 0
    assert len(store.search("DiagnosticReport")) == 2


def test_applier_gives_way_to_a_burst_for_at_most_the_lag(store: Log) -> None:
    store.log.apply_max_lag = 0.3
    store.record(_oru("L1"))
    assert store.log.apply_due() == 0  # a message just arrived: the receiver has the machine
    time.sleep(0.1)
    assert store.log.apply_due() == 1  # quiet for 50 ms: applied
    store.record(_oru("L2"))
    for i in range(8):  # a burst that goes on: applied once the oldest has waited 0.3 s
        time.sleep(0.05)
        store.record(_oru(f"L3-{i}"))
        store.log._last_accept = time.monotonic()
        if store.log.apply_due():
            break
    else:
        pytest.fail("the applier never ran during the burst")
    assert i >= 4


def test_receiving_waits_while_max_pending_messages_wait(store: Log) -> None:
    store.log.max_pending = 2
    store.log.apply_max_lag = 60
    store.record(_oru("W1"), _oru("W2"))
    done = threading.Event()

    def third() -> None:
        store.record(_oru("W3"))
        done.set()

    t = threading.Thread(target=third)
    t.start()
    assert not done.wait(0.5)  # held back: two are waiting already
    assert store.log.apply_pending(1) == 1
    assert done.wait(10)
    t.join()
    assert [r.control_id for r in store.rows()] == ["W1", "W2", "W3"]


# -- through the running server -------------------------------------------------------------------------------


def test_mllp_send_gets_ca_and_the_resources_follow(server: ServerProc) -> None:
    exe = MESSAGES / "oru_r01_cmp.hl7"  # MSH-15/16 AL|NE
    out = subprocess.run([str(Path(sys.executable).with_name("mllp_send")), "--loose", "-f", str(exe), "-p",
                          str(server.mllp_port), "127.0.0.1"], capture_output=True, timeout=60, check=True)
    assert "MSA|CA|LAB20261120-0001" in out.stdout.decode().replace("\r", "\n")
    db = Database(database_url(server))
    try:
        fhir = FhirStore(db)

        def applied() -> bool:
            with db.reading() as s:
                row = s.scalars(select(Hl7Message)).one()
            return not row.pending and bool(row.resources)

        wait_for(applied, timeout=30, what="the accepted message's resources")
        reports = fhir.search("DiagnosticReport", [("identifier", "FIL-20261120-0457")])
        assert reports["total"] == 1
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        assert "interop_hl7_pending 0.0" in metrics
        assert 'interop_hl7_messages_total{ack="CA",message_type="ORU^R01"} 1.0' in metrics
    finally:
        db.dispose()


def test_refusals_before_storing_use_the_accept_codes(store: Log) -> None:
    from interop.config import Hl7Settings
    from interop.errors import InsufficientStorage
    from interop.hl7v2.listener import MllpListener
    from interop.hl7v2.mllp import Oversized

    listener = MllpListener(Hl7Settings(), store.log)

    def full() -> None:
        raise InsufficientStorage("storage is nearly full")

    listener.admit = full
    refused = listener._refused(_oru("X1"))
    assert refused is not None and segments(refused)["MSA"][1:3] == ["CE", "X1"]
    assert segments(listener._refused(oru("X2")) or b"")["MSA"][1] == "AE"  # original mode
    big = listener._oversized(Oversized(_oru("X3")[:200], 5 << 20))
    assert segments(big)["MSA"][1:3] == ["CR", "X3"]
    assert store.rows() == []


def test_cli_lists_what_the_applier_found_and_replays_only_those(store: Log, tmp_path: Path) -> None:
    store.record(_oru("C1"), _oru("C2").replace(b"||5.4|", b"||high|"))
    store.log.apply_pending()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")},
           "INTEROP_DATABASE_URL": str(store.db.engine.url.render_as_string(hide_password=False)),
           "INTEROP_DATA_DIR": str(tmp_path / "data")}

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "interop", "hl7", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=True).stdout

    listed = cli("list", "--errors").strip().splitlines()
    assert len(listed) == 1 and "\tC2\t" in listed[0] and "\tCA\t102 at OBX[1]-5" in listed[0]
    assert [ln.split("\t")[3] for ln in cli("list").strip().splitlines()] == ["C1", "C2"]
    replayed = cli("replay", "--errors").strip().splitlines()
    assert len(replayed) == 1 and replayed[0].split("\t")[2] == "C2" and replayed[0].split("\t")[4].startswith("CA 102")
