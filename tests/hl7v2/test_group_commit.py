"""Group commit of received messages (``MessageLog.record`` and ``GroupCommit``), without sockets: one
transaction per group, each message answered as if alone (HL7 v2.5.1 Ch. 2 §2.9.2; DESIGN promises 1–3)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event, func, select

from interop.errors import InvalidInput
from interop.fhir.store import FhirStore
from interop.hl7v2.group import GroupCommit
from interop.hl7v2.mapping import MappingOptions
from interop.hl7v2.messages import Coalesced, MessageLog
from interop.hl7v2.models import Hl7Message
from interop.store.db import Database
from tests.hl7v2.support import oru, sample


class Log:
    """A message log over a fresh database, whose FHIR transaction can be made to fail for chosen messages."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.db.migrate()
        self.fhir = FhirStore(self.db)
        self.refuse: set[str] = set()  # control IDs whose Bundle the store refuses (after writing it)
        self.crash: set[str] = set()  # control IDs whose Bundle makes the store fail with a bug
        self.log = MessageLog(self.db, self._transaction, MappingOptions())
        self.commits = 0
        event.listen(self.db.write_engine, "commit", self._committed)

    def _committed(self, _conn: Any) -> None:
        self.commits += 1

    def _transaction(self, bundle: dict[str, Any], *, session: Any = None) -> dict[str, Any]:
        out = self.fhir.transaction(bundle, session=session)
        ident = bundle["entry"][-1]["resource"]["identifier"][0]["value"]  # <filler>/<code>: the filler names it
        if any(ident.startswith(f"{c}/") for c in self.refuse):
            raise InvalidInput("refused by the store for this test", expression="Observation.value")
        if any(ident.startswith(f"{c}/") for c in self.crash):
            raise RuntimeError("a bug in the store, for this test")
        return out

    def record(self, *raws: bytes) -> list[Any]:
        return self.log.record([self.log.prepare(r, "test") for r in raws])

    def rows(self) -> list[Hl7Message]:
        with self.db.reading() as s:
            return list(s.scalars(select(Hl7Message).order_by(Hl7Message.id)))

    def search(self, rtype: str, **params: str) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.fhir.search(rtype, list(params.items())).get("entry", [])]


@pytest.fixture
def store(database_url: str) -> Iterator[Log]:
    log = Log(database_url)
    yield log
    log.db.dispose()


def _oru(cid: str, **kw: str) -> bytes:
    """A two-result ORU whose filler order number is its control ID (so a test can name its Bundle)."""
    return oru(cid, filler=cid, **kw)


def test_group_is_one_commit_and_each_message_gets_its_own_answer(store: Log) -> None:
    store.commits = 0
    got = store.record(*(_oru(f"G{i}", patient=f"MRN{i}") for i in range(5)))
    assert store.commits == 1
    assert [g.outcome.code for g in got] == ["AA"] * 5 and not any(g.duplicate for g in got)
    assert [g.header.control_id for g in got] == [f"G{i}" for i in range(5)]
    assert [r.control_id for r in store.rows()] == [f"G{i}" for i in range(5)]  # stored in the order given
    assert all(len(g.resources) == 5 for g in got)
    assert len(store.search("Observation", _count="100")) == 10


def test_duplicate_within_one_group_is_answered_as_the_first_and_stored_once(store: Log) -> None:
    first, again, other = store.record(_oru("D1"), _oru("D1"), _oru("D1", sender="LAB_POC"))
    assert (first.outcome.code, again.outcome.code, other.outcome.code) == ("AA", "AA", "AA")
    assert again.duplicate and again.message_id == first.message_id and again.resources == first.resources
    assert not other.duplicate  # the same control ID from another sender is another message
    assert len(store.rows()) == 2
    obs = store.search("Observation", code="http://loinc.org|2093-3")
    assert [o["meta"]["versionId"] for o in obs] == ["1"]  # applied once


def test_duplicate_of_a_committed_message_in_a_later_group(store: Log) -> None:
    [first] = store.record(_oru("D2"))
    [again, new] = store.record(_oru("D2"), _oru("D3"))
    assert again.duplicate and again.message_id == first.message_id and again.outcome.code == "AA"
    assert not new.duplicate and [r.control_id for r in store.rows()] == ["D2", "D3"]


def test_correction_in_the_same_group_as_its_original_updates_it(store: Log) -> None:
    original, corrected = store.record(sample("oru_r01_cmp.hl7"), sample("oru_r01_cmp_corrected.hl7"))
    assert (original.outcome.code, corrected.outcome.code) == ("AA", "AA")
    [obs] = store.search("Observation", code="http://loinc.org|2345-7")
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 124 and obs["meta"]["versionId"] == "2"
    assert f"Observation/{obs['id']}" in original.resources and f"Observation/{obs['id']}" in corrected.resources


def test_bad_message_in_a_group_is_kept_with_ae_and_the_others_commit(store: Log) -> None:
    bad = _oru("E2").replace(b"||5.4|", b"||high|")
    got = store.record(_oru("E1"), bad, _oru("E3"))
    assert [g.outcome.code for g in got] == ["AA", "AE", "AA"]
    assert got[1].outcome.error_code == "102" and got[1].outcome.location == "OBX[1]-5" and not got[1].resources
    rows = store.rows()
    assert [(r.control_id, r.ack_code) for r in rows] == [("E1", "AA"), ("E2", "AE"), ("E3", "AA")]
    assert rows[1].raw == bad and rows[1].resources is None
    assert len(store.search("DiagnosticReport")) == 2


def test_store_refusal_in_a_group_undoes_only_that_message(store: Log) -> None:
    store.refuse = {"R2"}
    got = store.record(_oru("R1", patient="MRN1"), _oru("R2", patient="MRN2"), _oru("R3", patient="MRN3"))
    assert [g.outcome.code for g in got] == ["AA", "AE", "AA"]
    assert got[1].outcome.location == "Observation.value" and got[1].message_id is not None
    assert [(r.control_id, r.ack_code) for r in store.rows()] == [("R1", "AA"), ("R2", "AE"), ("R3", "AA")]
    # what R2's Bundle had written before the store refused it was rolled back to its savepoint
    assert store.search("Patient", identifier="urn:hl7v2:GENHOSP|MRN2") == []
    assert len(store.search("Patient", identifier="urn:hl7v2:GENHOSP|MRN3")) == 1


def test_failure_in_a_group_costs_the_others_nothing(store: Log) -> None:
    store.crash = {"C2"}
    store.commits = 0
    got = store.record(_oru("C1", patient="MRN1"), _oru("C2", patient="MRN2"), _oru("C3", patient="MRN3"))
    assert [g.outcome.code for g in got] == ["AA", "AE", "AA"]
    assert got[1].outcome.error_code == "207" and got[1].message_id is None  # not stored: the sender sends again
    assert [r.control_id for r in store.rows()] == ["C1", "C3"]
    assert store.search("Patient", identifier="urn:hl7v2:GENHOSP|MRN2") == []
    store.crash = set()
    [again] = store.record(_oru("C2", patient="MRN2"))
    assert again.outcome.code == "AA" and not again.duplicate


def test_routing_is_woken_after_the_data_is_visible(store: Log) -> None:
    seen: list[int] = []

    def wake() -> None:  # reads through its own session, as the router does
        seen.append(len(store.search("Observation", code="http://loinc.org|2093-3", _count="100")))

    store.log.on_stored = wake
    store.record(_oru("W1", patient="MRN1"), _oru("W2", patient="MRN2"))
    assert seen == [2]
    store.record(_oru("W1", patient="MRN1"))  # a duplicate wrote nothing: no wake
    assert seen == [2]


def test_coalesced_hook_runs_at_once_then_once_after_a_burst() -> None:
    calls: list[float] = []
    hook = Coalesced(0.2)
    t0 = time.monotonic()
    for _ in range(50):
        hook(lambda: calls.append(time.monotonic() - t0))
    assert len(calls) == 1 and calls[0] < 0.1  # the first at once
    time.sleep(0.4)
    assert len(calls) == 2 and 0.15 < calls[1] < 0.35  # the burst's calls: one, when the interval was up
    time.sleep(0.25)
    hook(lambda: calls.append(time.monotonic() - t0))
    assert len(calls) == 3  # after a quiet spell: at once again


def test_group_commit_keeps_each_senders_order_and_shares_commits(store: Log) -> None:
    senders, per_sender = 4, 15
    store.commits = 0
    with ThreadPoolExecutor(4) as pool:
        group = GroupCommit(store.log, pool, max_group=8)
        group.start()
        futures: dict[int, list[Any]] = {c: [] for c in range(senders)}

        def send(c: int) -> None:  # one sender pipelines its messages: results, then a correction of the first
            for i in range(per_sender):
                futures[c].append(group.submit(_oru(f"S{c}-{i}", patient=f"MRN{c}", value=str(i)), "test"))
            fix = oru(f"S{c}-fix", patient=f"MRN{c}", filler=f"S{c}-0", value="9.9", status="C")
            futures[c].append(group.submit(fix, "test"))

        threads = [threading.Thread(target=send, args=(c,)) for c in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = {c: [f.result(timeout=60) for f in fs] for c, fs in futures.items()}
        group.stop()
    assert all(r.outcome.code == "AA" for rs in results.values() for r in rs)
    total = senders * (per_sender + 1)
    assert sum(n * size for size, n in group.groups.items()) == total
    assert store.commits < total and max(group.groups) > 1  # commits were shared
    rows = store.rows()
    for c in range(senders):  # each sender's messages were stored in the order it sent them
        mine = [r.control_id for r in rows if r.control_id and r.control_id.startswith(f"S{c}-")]
        assert mine == [f"S{c}-{i}" for i in range(per_sender)] + [f"S{c}-fix"]
        [first] = store.search("Observation", identifier=f"urn:hl7v2:GENLAB|S{c}-0/2093-3")
        assert first["status"] == "corrected" and first["valueQuantity"]["value"] == 9.9
    with store.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Hl7Message)) == total
