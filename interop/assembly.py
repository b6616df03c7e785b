"""Study assembly: deciding when a study has arrived whole and is ready for routing.

A study is *ready* when no session (a DIMSE association or a STOW-RS request) that delivered to it is
still open and no instance has arrived for ``quiet_seconds``. A later instance re-opens it (the store
records a ``reopened`` event and sets the study back to ``receiving``), and it becomes ready again after
the next quiet period. Each transition is a row in ``study_events``; consumers (routing) read that log by
id, so readiness survives restarts: after a crash, open sessions are gone and a receiving study becomes
ready one quiet period after start-up.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable

from sqlalchemy import func, select

from interop import logs, metrics
from interop.background import Loop
from interop.store.db import Database
from interop.store.models import Instance, Series, Study, StudyEvent

log = logging.getLogger(__name__)


def _aware(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


def ready_latency(now: dt.datetime, first_received: dt.datetime, reopened: dt.datetime | None) -> float:
    """Seconds from the study's first instance (or, for a study a later instance re-opened, that reopening)
    to ``now``, when it is ready: the ``interop_study_ready_seconds`` histogram."""
    start = _aware(first_received)
    if reopened is not None:
        start = max(start, _aware(reopened))
    return max(0.0, (now - start).total_seconds())


class StudyAssembler:
    """Tracks open delivery sessions in memory and turns quiet studies ready in the database."""

    def __init__(
        self,
        db: Database,
        quiet_seconds: float,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.db = db
        self.quiet = dt.timedelta(seconds=quiet_seconds)
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, set[str]] = {}
        self._loop: Loop | None = None
        self._listeners: list[Callable[[StudyEvent], None]] = []

    # -- sessions -------------------------------------------------------------------------------------

    def open_session(self) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._sessions[key] = set()
        return key

    def touch(self, study_uid: str, session_key: str | None) -> None:
        """Record that ``session_key`` is delivering to ``study_uid`` (called before the index commit)."""
        if session_key is None:
            return
        with self._lock:
            studies = self._sessions.get(session_key)
            if studies is not None:
                studies.add(study_uid)

    def close_session(self, session_key: str) -> None:
        with self._lock:
            self._sessions.pop(session_key, None)

    def busy_studies(self) -> set[str]:
        with self._lock:
            return set().union(*self._sessions.values()) if self._sessions else set()

    def subscribe(self, listener: Callable[[StudyEvent], None]) -> None:
        """Call ``listener`` with each ``ready`` event after it is committed (in the sweeper thread)."""
        self._listeners.append(listener)

    # -- readiness ------------------------------------------------------------------------------------

    def sweep(self) -> list[StudyEvent]:
        """Mark quiet studies ready; returns the committed ``ready`` events."""
        cutoff = self.clock() - self.quiet
        with self.db.reading() as s:
            candidates = list(
                s.scalars(
                    select(Study.study_uid).where(Study.state == "receiving", Study.last_received_at <= cutoff)
                )
            )
        busy = self.busy_studies()
        candidates = [uid for uid in candidates if uid not in busy]
        if not candidates:
            return []
        events: list[StudyEvent] = []
        waited: list[float] = []
        now = self.clock()
        with self.db.writing() as s:
            for uid in candidates:
                study = s.scalars(select(Study).where(Study.study_uid == uid)).one_or_none()
                if study is None or study.state != "receiving":
                    continue
                last = study.last_received_at
                if last.tzinfo is None:
                    last = last.replace(tzinfo=dt.UTC)
                if last > cutoff:  # an instance arrived since we looked
                    continue
                n_series = s.scalar(select(func.count(Series.id)).where(Series.study_pk == study.id)) or 0
                n_inst = s.scalar(select(func.count(Instance.id)).where(Instance.study_pk == study.id)) or 0
                reopened = s.scalar(select(func.max(StudyEvent.at)).where(StudyEvent.study_uid == uid,
                                                                            StudyEvent.kind == "reopened"))
                waited.append(ready_latency(now, study.created_at, reopened))
                study.state = "ready"
                ev = StudyEvent(study_uid=uid, kind="ready", series_count=n_series, instance_count=n_inst, at=now)
                s.add(ev)
                events.append(ev)
        metrics.STUDIES_READY.inc(len(events))
        for seconds in waited:
            metrics.STUDY_READY_SECONDS.observe(seconds)
        for ev, seconds in zip(events, waited, strict=True):
            with logs.correlated(logs.study_id(ev.study_uid)):
                log.info("study ready (%d series, %d instances) %.1f s after its first instance",
                         ev.series_count, ev.instance_count, seconds)
                for listener in self._listeners:
                    try:
                        listener(ev)
                    except Exception:
                        log.exception("study-ready listener failed")
        return events

    def start(self, interval: float | None = None) -> None:
        period = interval if interval is not None else max(0.05, min(1.0, self.quiet.total_seconds() / 4))
        self._loop = Loop("study-assembly", self.sweep, period)
        self._loop.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None


def events_since(db: Database, after_id: int = 0, limit: int = 100, kind: str | None = None) -> list[StudyEvent]:
    """Study events with id greater than ``after_id``, oldest first (the routing consumer's cursor)."""
    stmt = select(StudyEvent).where(StudyEvent.id > after_id).order_by(StudyEvent.id).limit(limit)
    if kind:
        stmt = stmt.where(StudyEvent.kind == kind)
    with db.reading() as s:
        return list(s.scalars(stmt))
