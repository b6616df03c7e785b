"""Retention: delete received images once their results are home, and never before (``[retention]``).

The node is not an archive: the PACS keeps the images, the EHR keeps the reports. Once a study's AI results
have been delivered everywhere they were owed, and (by default) a physician has signed them, its received
instances are deleted ``retention.days`` later. What stays: the study's reports and sign-offs, every FHIR
resource (DiagnosticReport, Observations, ServiceRequests, ImagingStudy, Provenance), the job results, and this
node's own objects in the study (the SR, SEG and heat-map the outbox stored locally, ``source = writeback``;
``keep_results``), so the results still read and render as before and only the received pixel data is gone.

A study is **kept** while any of these holds (:func:`decide`, a pure function of :class:`StudyFacts`):

* it is receiving (an instance arrived within the quiet period: it is not ``ready``);
* a job on it is not finished (queued, running, retrying);
* a report of its jobs is still being built (or could not be, ``failed``: the builder retries it);
* with ``require_signoff``: a report awaits a physician's verdict (``preliminary``);
* a write-back owed for its reports is not delivered (pending, sending, retrying, or dead: a dead letter is
  an operator's to mend or retry, and the images it may need must still be there);
* the newest of its last delivery, last sign-off, last job end and last received instance is less than
  ``days`` old;
* it never produced a result (no rule matched, or every job failed or was cancelled) and
  ``without_results_days`` is unset (or not yet reached).

Crash safety: a study's index rows (instances, emptied series, the study row when nothing of it is left) are
deleted in one transaction that first locks the study row and decides again on what it reads there, so an
instance or a job that arrived since the candidate list was read keeps the study. The files go after the
commit; a crash in between leaves files no row points at, which ``interop store check [--delete]`` lists and
removes. A ``purged`` study event records each deletion (``GET /api/studies/events``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, exists, func, insert, select

from interop.config import RetentionSettings
from interop.jobs.models import FINAL_STATES, Job, WriteBack
from interop.reports.models import Report
from interop.store.blobs import BlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.store.models import Instance, Series, Study, StudyEvent

log = logging.getLogger(__name__)

#: Reports a physician has given a verdict on (interop.reports.models).
SIGNED = ("final", "amended", "cancelled", "entered-in-error")
#: Instances this node stored itself (the outbox's local write-back): results, kept with ``keep_results``.
OWN_SOURCE = "writeback"
_PAGE = 500


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    return None if t is None else (t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t)


@dataclass
class StudyFacts:
    """What retention decides on, for one study: its state and the states (with counts) of the jobs, reports
    and write-backs that belong to it, and the newest time of each."""

    study_uid: str
    state: str
    last_received_at: dt.datetime
    jobs: dict[str, int] = field(default_factory=dict)
    reports: dict[str, int] = field(default_factory=dict)
    writebacks: dict[str, int] = field(default_factory=dict)
    last_job_at: dt.datetime | None = None
    last_report_at: dt.datetime | None = None
    last_sent_at: dt.datetime | None = None


@dataclass(frozen=True)
class Decision:
    study_uid: str
    delete: bool
    reason: str
    instances: int = 0


def _count(states: dict[str, int], wanted: Iterable[str] | None = None, *, exclude: Iterable[str] = ()) -> int:
    keep = set(exclude)
    return sum(n for s, n in states.items() if (wanted is None or s in wanted) and s not in keep)


def _states(states: dict[str, int], exclude: Iterable[str] = ()) -> str:
    skip = set(exclude)
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items()) if s not in skip)


def decide(facts: StudyFacts, policy: RetentionSettings, now: dt.datetime) -> tuple[bool, str]:
    """Whether the study's received instances may be deleted now, and why (or why not)."""
    if facts.state != "ready":
        return False, f"the study is {facts.state}"
    if _count(facts.jobs, exclude=FINAL_STATES):
        return False, f"jobs not finished: {_states(facts.jobs, FINAL_STATES)}"
    if _count(facts.reports, ("building", "failed")):
        return False, f"reports not built: {_states(facts.reports, ('preliminary', *SIGNED))}"
    if policy.require_signoff and facts.reports.get("preliminary"):
        return False, f"{facts.reports['preliminary']} report(s) await sign-off (retention.require_signoff)"
    if _count(facts.writebacks, exclude=("sent",)):
        return False, f"write-backs not delivered: {_states(facts.writebacks, ('sent',))}"
    if facts.jobs.get("succeeded"):
        days = policy.days
        times = [facts.last_received_at, facts.last_job_at, facts.last_report_at, facts.last_sent_at]
        what = "results delivered"
    elif policy.without_results_days is None:
        return False, "no results (retention.without_results_days is not set)"
    else:
        days = policy.without_results_days
        times = [facts.last_received_at, facts.last_job_at]
        what = "no results; last activity"
    last = max(t for t in (_aware(t) for t in times) if t is not None)
    age = (now - last).total_seconds() / 86400
    if age < days:
        return False, f"{what} {last:%Y-%m-%d %H:%M} UTC, {age:.1f} of {days:g} days ago"
    return True, f"{what} {last:%Y-%m-%d %H:%M} UTC, {age:.1f} days ago"


# -- reading the facts ----------------------------------------------------------------------------------------


def _facts(conn: Connection, studies: list[tuple[str, str, dt.datetime]]) -> dict[str, StudyFacts]:
    """The facts of ``studies`` ((uid, state, last received)), with three grouped queries."""
    out = {uid: StudyFacts(uid, state, cast(dt.datetime, _aware(at))) for uid, state, at in studies}
    uids = list(out)
    for uid, state, n, last in conn.execute(
            select(Job.study_uid, Job.state, func.count(), func.max(Job.finished_at))
            .where(Job.study_uid.in_(uids)).group_by(Job.study_uid, Job.state)):
        f = out[cast(str, uid)]
        f.jobs[state] = n
        f.last_job_at = _later(f.last_job_at, last)
    for uid, state, n, last in conn.execute(
            select(Report.study_uid, Report.state, func.count(), func.max(Report.updated_at))
            .where(Report.study_uid.in_(uids)).group_by(Report.study_uid, Report.state)):
        f = out[cast(str, uid)]
        f.reports[state] = n
        f.last_report_at = _later(f.last_report_at, last)
    for uid, state, n, last in conn.execute(
            select(Job.study_uid, WriteBack.state, func.count(), func.max(WriteBack.sent_at))
            .join(Job, Job.id == WriteBack.job_id)
            .where(Job.study_uid.in_(uids)).group_by(Job.study_uid, WriteBack.state)):
        f = out[cast(str, uid)]
        f.writebacks[state] = n
        f.last_sent_at = _later(f.last_sent_at, last)
    return out


def _later(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    a, b = _aware(a), _aware(b)
    if a is None or b is None:
        return a or b
    return max(a, b)


class Retention:
    """Finds the studies whose received instances may go, and deletes them (see the module docstring)."""

    def __init__(self, db: Database, blobs: BlobStore, policy: RetentionSettings, *,
                 store: InstanceStore | None = None, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.db = db
        self.blobs = blobs
        self.policy = policy
        self.store = store
        self.clock = clock

    def _deletable(self) -> Any:
        """Instances retention deletes: the received ones (and the node's own with ``keep_results`` off)."""
        return Instance.source != OWN_SOURCE if self.policy.keep_results else Instance.id.is_not(None)

    def review(self) -> Iterator[Decision]:
        """A decision for every study old enough to be considered that still has instances to delete."""
        now = self.clock()
        floors = [self.policy.days, *([self.policy.without_results_days] if self.policy.without_results_days else [])]
        cutoff = now - dt.timedelta(days=min(floors))
        after: tuple[dt.datetime, int] | None = None
        while True:
            q = (select(Study.id, Study.study_uid, Study.state, Study.last_received_at,
                        select(func.count()).where(Instance.study_pk == Study.id, self._deletable())
                        .scalar_subquery().label("n"))
                 .where(Study.last_received_at < cutoff,
                        exists().where(Instance.study_pk == Study.id, self._deletable()))
                 .order_by(Study.last_received_at, Study.id).limit(_PAGE))
            if after is not None:
                q = q.where((Study.last_received_at > after[0])
                            | ((Study.last_received_at == after[0]) & (Study.id > after[1])))
            with self.db.engine.connect() as conn:
                rows = conn.execute(q).all()
                if not rows:
                    return
                facts = _facts(conn, [(r.study_uid, r.state, r.last_received_at) for r in rows])
            for r in rows:
                ok, why = decide(facts[r.study_uid], self.policy, now)
                yield Decision(r.study_uid, ok, why, int(r.n))
            after = (rows[-1].last_received_at, rows[-1].id)
            if len(rows) < _PAGE:
                return

    def run(self, *, dry_run: bool = False, limit: int | None = None) -> list[Decision]:
        """One pass: the studies deleted (or, with ``dry_run``, those that would be), at most ``limit``
        (default ``retention.batch``)."""
        limit = self.policy.batch if limit is None else limit
        done: list[Decision] = []
        for d in self.review():
            if len(done) >= limit:
                break
            if not d.delete:
                continue
            if dry_run:
                done.append(d)
                continue
            deleted = self.purge(d.study_uid)
            if deleted is not None:
                done.append(deleted)
        if done and not dry_run:
            log.info("retention: deleted the received instances of %d study(ies)", len(done))
        return done

    def purge(self, study_uid: str) -> Decision | None:
        """Delete the study's instances if, decided again under the study row's lock, it may go; then the files.
        None when it is kept after all."""
        studies = cast(Table, Study.__table__)
        instances = cast(Table, Instance.__table__)
        series = cast(Table, Series.__table__)
        with self.db.write_tx() as conn:  # SQLite: BEGIN IMMEDIATE (the write lock, so nothing lands meanwhile)
            q = select(studies.c.id, studies.c.state, studies.c.last_received_at).where(
                studies.c.study_uid == study_uid)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()  # an ingest touching the study (its row update, its FK check) waits
            row = conn.execute(q).first()
            if row is None:
                return None
            facts = _facts(conn, [(study_uid, row.state, row.last_received_at)])[study_uid]
            ok, why = decide(facts, self.policy, self.clock())
            if not ok:
                log.info("retention: study %s kept after all: %s", study_uid, why)
                return None
            doomed = self._deletable()
            keys = list(conn.scalars(select(Instance.blob_key).where(Instance.study_pk == row.id, doomed)))
            conn.execute(delete(instances).where(instances.c.study_pk == row.id, doomed))
            conn.execute(delete(series).where(series.c.study_pk == row.id,
                                              ~exists().where(instances.c.series_pk == series.c.id)))
            left = conn.scalar(select(func.count()).select_from(instances).where(instances.c.study_pk == row.id))
            if not left:
                conn.execute(delete(studies).where(studies.c.id == row.id))
            conn.execute(insert(cast(Table, StudyEvent.__table__)).values(
                study_uid=study_uid, kind="purged", at=self.clock(), series_count=0, instance_count=len(keys),
                detail=f"retention deleted {len(keys)} received instance(s): {why}"))
        if self.store is not None:
            self.store.forget_study(study_uid)
        failed = 0
        for key in keys:
            try:
                self.blobs.delete(key)
            except Exception as exc:  # the row is gone: the file is an orphan `interop store check` removes
                failed += 1
                log.warning("retention: file %s of study %s not deleted: %s", key, study_uid, exc)
        log.info("retention: study %s: %d instance(s) deleted (%s)%s", study_uid, len(keys), why,
                 f"; {failed} file(s) left for `interop store check --delete`" if failed else "")
        return Decision(study_uid, True, why, len(keys))
