"""The durable job queue: every state change of a job is one committed row update.

Concurrency: a job is *claimed* by one worker at a time (an update that only succeeds from ``queued`` or a
due ``retrying``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite). The claim gives a
fresh lease token; the worker renews the lease while the app runs and may finish the job only while it still
holds that token (a fencing token), so a run whose lease was taken away (its worker was presumed dead and the
job re-queued) can never complete the job a second time. See :mod:`interop.jobs.models` for the states.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from interop.errors import Conflict, NotFound
from interop.jobs.models import FINAL_STATES, PRIORITY_RANK, Job, JobAttempt, JobResult
from interop.reports.models import Report
from interop.store.db import Database

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands stored UTC times back without a zone."""
    return None if t is None else (t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t)


@dataclass(frozen=True)
class NewJob:
    idempotency_key: str
    app: str
    app_version: str
    model_version: str
    rule: str
    trigger: str
    priority: str
    inputs: dict[str, Any]
    study_uid: str | None
    patient_id: str | None
    max_attempts: int
    backoff_seconds: float
    timeout_seconds: float
    triggered_at: dt.datetime
    #: A shadow run (interop.mlops) of the clinical job ``shadow_of``: no report, no write-back.
    shadow: bool = False
    shadow_of: int | None = None


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: run it, renew the lease with ``token``, finish it with ``token``."""

    job_id: int
    token: str
    attempt: int
    app: str
    inputs: dict[str, Any]
    timeout_seconds: float
    study_uid: str | None
    patient_id: str | None
    model_version: str = ""
    triggered_at: dt.datetime | None = None
    shadow: bool = False


class JobQueue:
    def __init__(self, db: Database, *, lease_seconds: float = 30.0) -> None:
        self.db = db
        self.lease = dt.timedelta(seconds=lease_seconds)

    # -- creating -------------------------------------------------------------------------------------------

    def enqueue(self, job: NewJob, session: Session | None = None) -> tuple[int, bool]:
        """Queue ``job`` unless a job with its idempotency key exists: ``(job id, created)``."""
        values = dict(
            idempotency_key=job.idempotency_key, app=job.app, app_version=job.app_version,
            model_version=job.model_version, rule=job.rule, trigger=job.trigger, priority=job.priority,
            priority_rank=PRIORITY_RANK.get(job.priority, 1), study_uid=job.study_uid, patient_id=job.patient_id,
            inputs=json.dumps(job.inputs, sort_keys=True), state="queued", attempts=0, max_attempts=job.max_attempts,
            backoff_seconds=job.backoff_seconds, timeout_seconds=job.timeout_seconds, cancel_requested=False,
            triggered_at=job.triggered_at, created_at=utcnow(), shadow=job.shadow, shadow_of=job.shadow_of,
        )
        if session is not None:
            return self._enqueue(session, values)
        with self.db.writing() as s:
            return self._enqueue(s, values)

    def _enqueue(self, s: Session, values: dict[str, Any]) -> tuple[int, bool]:
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = (insert(Job).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])
                .returning(Job.id))
        new_id = s.scalar(stmt)
        if new_id is not None:
            return new_id, True
        job_id = s.scalar(select(Job.id).where(Job.idempotency_key == values["idempotency_key"]))
        assert job_id is not None
        return job_id, False

    # -- running --------------------------------------------------------------------------------------------

    def _due(self, now: dt.datetime) -> Any:
        return (Job.state == "queued") | ((Job.state == "retrying") & (Job.next_attempt_at <= now))

    def claim(self, worker: str, job_id: int | None = None, apps: list[str] | None = None) -> Claim | None:
        """Take the most urgent due job (or job ``job_id`` if it is due) and start an attempt on it."""
        now = utcnow()
        with self.db.writing() as s:
            q = select(Job).where(self._due(now)).order_by(Job.priority_rank, Job.id).limit(1)
            if job_id is not None:
                q = q.where(Job.id == job_id)
            if apps is not None:
                q = q.where(Job.app.in_(apps))
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            job = s.scalars(q).first()
            if job is None:
                return None
            token = secrets.token_hex(16)
            job.state = "running"
            job.attempts += 1
            job.lease_owner = worker
            job.lease_token = token
            job.lease_expires_at = now + self.lease
            job.started_at = job.started_at or now
            job.next_attempt_at = None
            s.add(JobAttempt(job_id=job.id, number=job.attempts, worker=worker, started_at=now, outcome="running"))
            return Claim(job.id, token, job.attempts, job.app, json.loads(job.inputs), job.timeout_seconds,
                         job.study_uid, job.patient_id, job.model_version, aware(job.triggered_at), job.shadow)

    def renew(self, job_id: int, token: str) -> tuple[bool, bool]:
        """Extend the lease: ``(still held, cancel requested)``."""
        with self.db.writing() as s:
            row = s.execute(select(Job.lease_token, Job.state, Job.cancel_requested).where(Job.id == job_id)).first()
            if row is None or row.lease_token != token or row.state != "running":
                return False, False
            s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() + self.lease))
            return True, bool(row.cancel_requested)

    def _held(self, s: Session, job_id: int, token: str) -> Job | None:
        q = select(Job).where(Job.id == job_id)
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update()
        job = s.scalars(q).first()
        if job is None or job.lease_token != token or job.state != "running":
            log.warning("job %s: lease %s no longer held; this run's outcome is discarded", job_id, token[:8])
            return None
        return job

    def _close_attempt(self, s: Session, job: Job, outcome: str, reason: str | None, exit_code: int | None,
                       now: dt.datetime) -> None:
        att = s.scalars(select(JobAttempt).where(JobAttempt.job_id == job.id, JobAttempt.number == job.attempts)
                        ).first()
        if att is not None:
            att.outcome = outcome
            att.reason = reason
            att.exit_code = exit_code
            att.finished_at = now
            started = aware(att.started_at)
            att.seconds = (now - started).total_seconds() if started else None

    def succeed(self, claim: Claim, result: dict[str, Any], arrays: dict[str, str]) -> bool:
        """Record the result and end the job ``succeeded``; False (and nothing written) without the lease."""
        now = utcnow()
        with self.db.writing() as s:
            job = self._held(s, claim.job_id, claim.token)
            if job is None:
                return False
            model = result.get("model") or {}
            s.add(JobResult(job_id=job.id, model_name=str(model.get("name", "")),
                            model_version=str(model.get("version", "")),
                            demonstration=bool(model.get("demonstration", False)),
                            content=json.dumps(result), arrays=json.dumps(arrays), created_at=now))
            # What it owes its readers, in the same transaction: a succeeded job always has its report (the
            # reporter builds it and the write-backs, interop.reports.service). A shadow run never has one: its
            # result is only compared with the clinical run's (interop.mlops.shadow).
            if not job.shadow:
                s.add(Report(job_id=job.id, app=job.app, model_name=str(model.get("name", "")),
                             model_version=str(model.get("version", "")),
                             demonstration=bool(model.get("demonstration", False)), patient_id=job.patient_id,
                             study_uid=job.study_uid, state="building", priority="routine", critical="[]",
                             verdicts=0, attempts=0, created_at=now, updated_at=now))
            self._close_attempt(s, job, "succeeded", None, 0, now)
            job.state = "succeeded"
            job.finished_at = now
            job.lease_token = None
            job.lease_expires_at = None
            return True

    def fail(self, claim: Claim, outcome: str, reason: str, exit_code: int | None = None) -> str | None:
        """End the attempt with ``outcome`` (error / timeout / cancelled): the job goes to ``retrying`` with
        backoff while attempts remain, else ``failed`` (error) or ``dead`` (timeout, lost); a cancelled run
        ends ``cancelled``. Returns the new state, or None without the lease."""
        now = utcnow()
        with self.db.writing() as s:
            job = self._held(s, claim.job_id, claim.token)
            if job is None:
                return None
            self._close_attempt(s, job, outcome, reason, exit_code, now)
            self._after_failure(job, outcome, reason, now)
            return job.state

    @staticmethod
    def _after_failure(job: Job, outcome: str, reason: str, now: dt.datetime) -> None:
        job.lease_token = None
        job.lease_expires_at = None
        job.lease_owner = None
        job.dispatched_at = None
        if outcome == "cancelled" or job.cancel_requested:
            job.state = "cancelled"
            job.error = reason if outcome == "cancelled" else job.error
            job.finished_at = now
            return
        job.error = f"attempt {job.attempts}: {reason}"
        if job.attempts < job.max_attempts:
            job.state = "retrying"
            job.next_attempt_at = now + dt.timedelta(seconds=job.backoff_seconds * 2 ** (job.attempts - 1))
        else:
            job.state = "failed" if outcome == "error" else "dead"
            job.finished_at = now

    def clinical_waiting(self, grace_seconds: float = 2.0) -> bool:
        """Whether a clinical (not shadow) job has been due for ``grace_seconds`` without a worker taking it:
        a running shadow run then gives its slot back (interop.jobs.worker)."""
        before = utcnow() - dt.timedelta(seconds=grace_seconds)
        with self.db.reading() as s:
            return s.scalar(select(Job.id).where(
                Job.shadow.is_(False),
                ((Job.state == "queued") & (Job.created_at <= before))
                | ((Job.state == "retrying") & (Job.next_attempt_at <= before))).limit(1)) is not None

    def preempt(self, claim: Claim, reason: str) -> bool:
        """Give a running shadow job back to the queue (its attempt ends ``preempted``; it gets one attempt
        more, so preemption never uses up its retries). False without the lease."""
        now = utcnow()
        with self.db.writing() as s:
            job = self._held(s, claim.job_id, claim.token)
            if job is None:
                return False
            self._close_attempt(s, job, "preempted", reason, None, now)
            job.state = "queued"
            job.max_attempts += 1
            job.lease_token = None
            job.lease_expires_at = None
            job.lease_owner = None
            job.dispatched_at = None
            return True

    def reap(self, owner_prefix: str | None = None) -> list[int]:
        """Jobs whose worker is gone: running with an expired lease (or, with ``owner_prefix``, held by this
        node's own earlier run, known dead at start-up). Each lost attempt counts; returns their ids."""
        now = utcnow()
        with self.db.writing() as s:
            q = select(Job).where(Job.state == "running")
            if owner_prefix is not None:
                q = q.where(Job.lease_owner.startswith(owner_prefix, autoescape=True))
            else:
                q = q.where(Job.lease_expires_at < now)
            lost = list(s.scalars(q))
            for job in lost:
                reason = (f"worker {job.lease_owner} was lost (no lease renewal since "
                          f"{aware(job.lease_expires_at)})" if owner_prefix is None else
                          f"the node restarted while {job.lease_owner} ran it")
                self._close_attempt(s, job, "lost", reason, None, now)
                self._after_failure(job, "lost", reason, now)
                log.warning("job %s: %s; now %s", job.id, reason, job.state)
            return [j.id for j in lost]

    # -- dispatching (Celery) -----------------------------------------------------------------------------

    def to_dispatch(self, resend_after: dt.timedelta, limit: int = 100) -> list[tuple[int, str]]:
        """Due jobs not handed to the transport yet (or handed so long ago that the message may be lost):
        marks them dispatched now and returns ``(id, priority)``, most urgent first."""
        now = utcnow()
        with self.db.writing() as s:
            q = (select(Job).where(self._due(now),
                                   (Job.dispatched_at.is_(None)) | (Job.dispatched_at < now - resend_after))
                 .order_by(Job.priority_rank, Job.id).limit(limit))
            jobs = list(s.scalars(q))
            for j in jobs:
                j.dispatched_at = now
            return [(j.id, j.priority) for j in jobs]

    def depth(self) -> list[tuple[str, str, int]]:
        """(app, state, number of jobs) for every pair present."""
        with self.db.reading() as s:
            return [(a, st, int(n)) for a, st, n in s.execute(
                select(Job.app, Job.state, func.count(Job.id)).group_by(Job.app, Job.state))]

    def running_ids(self) -> set[int]:
        with self.db.reading() as s:
            return set(s.scalars(select(Job.id).where(Job.state == "running")))

    def next_due_in(self) -> float | None:
        """Seconds until the earliest retrying job is due (0 if one is queued now), None if none waits."""
        with self.db.reading() as s:
            if s.scalar(select(Job.id).where(Job.state == "queued").limit(1)) is not None:
                return 0.0
            t = aware(s.scalar(select(func.min(Job.next_attempt_at)).where(Job.state == "retrying")))
        return None if t is None else max(0.0, (t - utcnow()).total_seconds())

    # -- operator actions -----------------------------------------------------------------------------------

    def cancel(self, job_id: int, reason: str = "cancelled through the API") -> str:
        with self.db.writing() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.state in FINAL_STATES:
                raise Conflict(f"job {job_id} is already {job.state}")
            if job.state == "running":
                job.cancel_requested = True  # its worker stops the app at the next lease renewal
                return "cancelling"
            job.state = "cancelled"
            job.error = reason
            job.finished_at = utcnow()
            return "cancelled"

    def retry(self, job_id: int, more_attempts: int) -> None:
        """Queue a failed, dead or cancelled job again with ``more_attempts`` attempts (its history stays)."""
        with self.db.writing() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.state not in ("failed", "dead", "cancelled"):
                raise Conflict(f"job {job_id} is {job.state}; only failed, dead or cancelled jobs can be retried")
            job.state = "queued"
            job.max_attempts = job.attempts + max(1, more_attempts)
            job.cancel_requested = False
            job.next_attempt_at = None
            job.dispatched_at = None
            job.finished_at = None

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, job_id: int) -> dict[str, Any]:
        with self.db.reading() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            attempts = list(s.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                      .order_by(JobAttempt.number)))
            result = s.scalars(select(JobResult).where(JobResult.job_id == job_id)).first()
            out = job_dict(job)
            out["attempt_history"] = [
                {"number": a.number, "worker": a.worker, "started_at": aware(a.started_at),
                 "finished_at": aware(a.finished_at), "outcome": a.outcome, "reason": a.reason,
                 "exit_code": a.exit_code, "seconds": a.seconds} for a in attempts]
            out["result"] = json.loads(result.content) if result else None
            out["arrays"] = sorted(json.loads(result.arrays)) if result else []
            return out

    def result_arrays(self, job_id: int) -> dict[str, str]:
        with self.db.reading() as s:
            row = s.scalar(select(JobResult.arrays).where(JobResult.job_id == job_id))
        if row is None:
            raise NotFound(f"job {job_id} has no result")
        arrays: dict[str, str] = json.loads(row)
        return arrays

    def search(self, *, state: str | None = None, app: str | None = None, study_uid: str | None = None,
               patient_id: str | None = None, limit: int = 100, after: int = 0) -> list[dict[str, Any]]:
        q = select(Job).where(Job.id > after).order_by(Job.id).limit(limit)
        if state:
            q = q.where(Job.state == state)
        if app:
            q = q.where(Job.app == app)
        if study_uid:
            q = q.where(Job.study_uid == study_uid)
        if patient_id:
            q = q.where(Job.patient_id == patient_id)
        with self.db.reading() as s:
            return [job_dict(j) for j in s.scalars(q)]


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "app": job.app, "app_version": job.app_version, "model_version": job.model_version,
        "rule": job.rule, "trigger": job.trigger, "priority": job.priority, "state": job.state,
        "study_uid": job.study_uid, "patient_id": job.patient_id, "inputs": json.loads(job.inputs),
        "attempts": job.attempts, "max_attempts": job.max_attempts, "error": job.error,
        "next_attempt_at": aware(job.next_attempt_at), "cancel_requested": job.cancel_requested,
        "lease_owner": job.lease_owner, "triggered_at": aware(job.triggered_at),
        "created_at": aware(job.created_at), "started_at": aware(job.started_at),
        "finished_at": aware(job.finished_at), "idempotency_key": job.idempotency_key,
        "shadow": bool(job.shadow), "shadow_of": job.shadow_of,
    }
