"""Study assembly: when a study counts as arrived whole (ready), and when a late instance re-opens it.

Unit tests drive :meth:`StudyAssembler.sweep` with an injected clock against a real SQLite index; the
integration tests hold a real DIMSE association open against a running node.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from interop.assembly import StudyAssembler, events_since
from interop.store.blobs import FileBlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.store.models import Study, StudyEvent
from tests.conftest import ServerProc
from tests.dicom.peers import association, contexts_for, fresh_instance, send, send_files
from tests.support import sample_file

QUIET = 5.0


class Clock:
    """Real time plus an offset the test moves forward; the store and the assembler share it."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.db = Database(f"sqlite:///{tmp_path / 'index.db'}")
        self.db.migrate()
        self.clock = Clock()
        self.assembler = StudyAssembler(self.db, QUIET, clock=self.clock)
        self.store = InstanceStore(self.db, FileBlobStore(tmp_path / "blobs"), on_study_touched=self.assembler.touch,
                                   clock=self.clock)
        self.study_uid = generate_uid()
        self.series_uid = generate_uid()

    def new_file(self, study_uid: str | None = None) -> Path:
        return fresh_instance(sample_file("CT_small.dcm"), self.tmp / "in", study_uid=study_uid or self.study_uid,
                              series_uid=self.series_uid if study_uid is None else generate_uid())

    def ingest(self, path: Path, session_key: str | None = None) -> int:
        copy = self.tmp / f"copy-{generate_uid()}.dcm"
        shutil.copyfile(path, copy)
        return self.store.ingest(copy, source="test", session_key=session_key).status

    def state(self, study_uid: str | None = None) -> str:
        with self.db.reading() as s:
            return str(s.scalars(select(Study.state).where(Study.study_uid == (study_uid or self.study_uid))).one())

    def events(self) -> list[tuple[str, str]]:
        return [(e.kind, e.study_uid) for e in events_since(self.db)]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


# -- sweep, with an injected clock --------------------------------------------------------------------------


def test_sweep_before_quiet_period_keeps_receiving(rig: Rig) -> None:
    rig.ingest(rig.new_file())
    rig.clock.advance(QUIET - 1)
    assert rig.assembler.sweep() == []
    assert rig.state() == "receiving"
    assert rig.events() == []


def test_sweep_after_quiet_period_marks_ready_once(rig: Rig) -> None:
    rig.ingest(rig.new_file())
    rig.ingest(rig.new_file())
    rig.clock.advance(QUIET + 0.5)
    (ev,) = rig.assembler.sweep()
    assert (ev.kind, ev.study_uid, ev.series_count, ev.instance_count) == ("ready", rig.study_uid, 1, 2)
    assert rig.state() == "ready"
    rig.clock.advance(60)
    assert rig.assembler.sweep() == [], "a ready study is reported once"
    assert rig.events() == [("ready", rig.study_uid)]


def test_sweep_open_session_holds_study_until_closed(rig: Rig) -> None:
    key = rig.assembler.open_session()
    rig.ingest(rig.new_file(), session_key=key)
    rig.clock.advance(10 * QUIET)
    assert rig.assembler.sweep() == [], "an association still delivering keeps the study receiving"
    assert rig.state() == "receiving"
    rig.assembler.close_session(key)
    assert [e.study_uid for e in rig.assembler.sweep()] == [rig.study_uid]


def test_sweep_open_session_holds_only_its_own_studies(rig: Rig) -> None:
    key = rig.assembler.open_session()
    rig.ingest(rig.new_file(), session_key=key)
    other = generate_uid()
    rig.ingest(rig.new_file(study_uid=other))
    rig.clock.advance(QUIET + 1)
    assert [e.study_uid for e in rig.assembler.sweep()] == [other]
    assert (rig.state(), rig.state(other)) == ("receiving", "ready")


def test_ingest_after_ready_reopens_and_readies_again(rig: Rig) -> None:
    rig.ingest(rig.new_file())
    rig.clock.advance(QUIET + 1)
    rig.assembler.sweep()
    rig.ingest(rig.new_file())
    assert rig.state() == "receiving"
    assert rig.events() == [("ready", rig.study_uid), ("reopened", rig.study_uid)]
    assert rig.assembler.sweep() == [], "the re-opened study waits a new quiet period"
    rig.clock.advance(QUIET + 1)
    (ev,) = rig.assembler.sweep()
    assert (ev.kind, ev.instance_count) == ("ready", 2)


def test_identical_resend_after_ready_does_not_reopen(rig: Rig) -> None:
    f = rig.new_file()
    rig.ingest(f)
    rig.clock.advance(QUIET + 1)
    rig.assembler.sweep()
    assert rig.ingest(f) == 0x0000
    assert rig.state() == "ready"
    assert rig.events() == [("ready", rig.study_uid)]


def test_sweep_notifies_listeners_and_survives_a_failing_one(rig: Rig) -> None:
    seen: list[StudyEvent] = []

    def broken(ev: StudyEvent) -> None:
        raise RuntimeError("listener bug")

    rig.assembler.subscribe(broken)
    rig.assembler.subscribe(seen.append)
    rig.ingest(rig.new_file())
    rig.clock.advance(QUIET + 1)
    events = rig.assembler.sweep()
    assert [e.study_uid for e in seen] == [rig.study_uid] == [e.study_uid for e in events]
    assert rig.state() == "ready"


def test_events_since_pages_by_id_and_filters_kind(rig: Rig) -> None:
    uids = [generate_uid() for _ in range(3)]
    for uid in uids:
        rig.ingest(rig.new_file(study_uid=uid))
    rig.clock.advance(QUIET + 1)
    rig.assembler.sweep()
    rig.ingest(rig.new_file(study_uid=uids[0]))  # reopened
    first = events_since(rig.db, 0, limit=2)
    rest = events_since(rig.db, first[-1].id)
    assert len(first) == 2 and [e.kind for e in rest] == ["ready", "reopened"]
    assert {e.study_uid for e in first + rest[:1]} == set(uids)
    assert [e.study_uid for e in events_since(rig.db, kind="reopened")] == [uids[0]]


def test_sweeper_thread_marks_ready_without_being_called(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    assembler = StudyAssembler(db, 0.2)
    store = InstanceStore(db, FileBlobStore(tmp_path / "blobs"), on_study_touched=assembler.touch)
    result = store.ingest(fresh_instance(sample_file("CT_small.dcm"), tmp_path / "in"), source="test")
    assembler.start()
    try:
        _wait(lambda: bool(events_since(db, kind="ready")), 5)
    finally:
        assembler.stop()
    assert events_since(db)[0].study_uid == result.study_uid


# -- against a running node -----------------------------------------------------------------------------------


def _wait(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _state(http: httpx.Client, study_uid: str) -> dict[str, Any]:
    r = http.get(f"/api/studies/{study_uid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.peer
def test_study_ready_only_after_association_released(server: ServerProc, tmp_path: Path) -> None:
    study_uid = generate_uid()
    series_uid = generate_uid()
    files = [fresh_instance(sample_file("CT_small.dcm"), tmp_path / "in", study_uid=study_uid, series_uid=series_uid)
             for _ in range(2)]
    with server.client() as http:
        with association(server, contexts_for(*files)) as assoc:
            assert send_files(assoc, *files) == [0, 0]
            time.sleep(2.5)  # well past the 1 s quiet period, association still open
            assert _state(http, study_uid)["state"] == "receiving"
        released = time.monotonic()
        _wait(lambda: _state(http, study_uid)["state"] == "ready", 5)
        assert time.monotonic() - released < 5
        state = _state(http, study_uid)
        assert (state["series_count"], state["instance_count"]) == (1, 2)

        # A later instance re-opens the study; it is ready again after the next quiet period.
        assert send(server, fresh_instance(sample_file("CT_small.dcm"), tmp_path / "late", study_uid=study_uid)) == [0]
        _wait(lambda: _state(http, study_uid)["state"] == "ready", 5)
        events = [e for e in http.get("/api/studies/events").json() if e["study_uid"] == study_uid]
    assert [e["kind"] for e in events] == ["ready", "reopened", "ready"]
    assert [e["instance_count"] for e in events if e["kind"] == "ready"] == [2, 3]
    assert events[0]["id"] < events[1]["id"] < events[2]["id"]


@pytest.mark.peer
def test_study_events_need_a_token(server: ServerProc) -> None:
    assert httpx.get(f"{server.base_url}/api/studies/events").status_code == 401
    with server.client(scope="system/Observation.rs") as http:
        assert http.get("/api/studies/events").status_code == 403
    with server.client() as http:
        r = http.get("/api/studies/events", params={"after": 0, "kind": "ready"})
        assert r.status_code == 200 and r.json() == []


@pytest.mark.peer
def test_study_receiving_at_crash_becomes_ready_after_restart(server: ServerProc, tmp_path: Path) -> None:
    f = fresh_instance(sample_file("CT_small.dcm"), tmp_path / "in")
    with association(server, contexts_for(f)) as assoc:
        assert send_files(assoc, f) == [0]
        server.kill()  # the association never ends cleanly
    study_uid = str(dcmread(f, stop_before_pixels=True).StudyInstanceUID)
    server.start()
    with server.client() as http:
        _wait(lambda: _state(http, study_uid)["state"] == "ready", 5)
