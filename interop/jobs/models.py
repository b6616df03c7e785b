"""Tables of the job queue: jobs, their attempts, their results, the routing rules and the routers' cursors.

A job is one app run on one exact input (a set of DICOM instances, or a set of Observation versions). Its
``idempotency_key`` (app + model version + that input) is unique, so a study delivered twice, or a rule
evaluated twice, queues one job. States (see :mod:`interop.jobs.queue`)::

    queued ──▶ running ──▶ succeeded
      ▲           │
      │           ├──▶ retrying ──(backoff)──▶ running ...
      │           ├──▶ failed     the app reported an error on its last allowed attempt (or one no retry mends)
      │           ├──▶ dead       it never came back (timed out, or its worker was lost) on its last attempt
      └─ retry ───┴──▶ cancelled
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

import interop.reports.models  # noqa: F401  (the reports table, which write-backs refer to)
from interop.store.models import UID, Base, utcnow

STATES = ("queued", "running", "retrying", "succeeded", "failed", "dead", "cancelled")
FINAL_STATES = ("succeeded", "failed", "dead", "cancelled")
#: Lower runs first. ``shadow``: a new model version run beside the active one (interop.mlops), only when no
#: clinical job waits.
PRIORITY_RANK = {"stat": 0, "routine": 1, "shadow": 2}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    app: Mapped[str] = mapped_column(String(64))
    app_version: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[str] = mapped_column(String(64))
    #: The routing rule that made it, or ``request`` for one asked for through the API.
    rule: Mapped[str] = mapped_column(String(64))
    #: ``study`` (a ready study), ``labs`` (a completed lab set) or ``request``.
    trigger: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(8))
    priority_rank: Mapped[int] = mapped_column(Integer)
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    #: JSON: {"series_uids": [...], "sop_instance_uids": [...]} or {"patient": "Patient/1", "observations": [...]}.
    inputs: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    backoff_seconds: Mapped[float] = mapped_column(Float)
    timeout_seconds: Mapped[float] = mapped_column(Float)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    #: Fencing token of the current run: only the run holding it may finish the job.
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the job was last handed to the executor's transport (Celery); cleared when it needs sending again.
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Why the last attempt failed (kept once the job has succeeded after a retry, for the record).
    error: Mapped[str | None] = mapped_column(Text)
    #: When the trigger happened (study ready, lab set complete, request): the start of the latency clock.
    triggered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: A shadow run: a model version tried beside the active one on the same input. Its result is kept and
    #: compared (interop.mlops), never reported, written back or shown as a clinical result.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The clinical job a shadow run shadows.
    shadow_of: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_jobs_due", "state", "priority_rank", "next_attempt_at", "id"),)


class JobAttempt(Base):
    """One run of a job: who ran it, how it ended and why."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: ``running``, ``succeeded``, ``error`` (the app failed), ``timeout``, ``lost`` (worker gone), ``cancelled``.
    outcome: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)


class JobResult(Base):
    """What a succeeded job's app produced (operators.app_result.AppResult) and where its arrays are."""

    __tablename__ = "job_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    demonstration: Mapped[bool] = mapped_column(Boolean)
    #: The result JSON (result.json as the app wrote it).
    content: Mapped[str] = mapped_column(Text)
    #: JSON object: array file name -> blob key.
    arrays: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RoutingRuleRow(Base):
    """A routing rule (interop.config.RoutingRule as JSON); ``source`` is ``config`` or ``api``."""

    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    definition: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(8))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RouterCursor(Base):
    """How far a router has read a log (study events by id; FHIR Observations by last update)."""

    __tablename__ = "router_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WriteBack(Base):
    """One object owed to one destination (the outbox, interop.writeback.outbox): a DICOM object (``sr``,
    ``seg``, ``heatmap``; rebuilt from the job's result when delivered, with its SOP Instance UID fixed when
    the row is made, so delivering it twice stores one copy), a FHIR transaction Bundle (``fhir``, kept in
    ``payload``; conditional on business identifiers, so delivering it twice changes nothing) or a
    notification (``webhook``). ``object_key`` names the object, unique per destination."""

    __tablename__ = "writebacks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: ``local`` (this node's own store and FHIR facade) or the name of a configured destination.
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # sr | seg | heatmap | fhir | webhook
    item: Mapped[int] = mapped_column(Integer, default=0)  # which segmentation / finding
    object_key: Mapped[str] = mapped_column(String(200))
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    #: The verdict (``signoffs.id``) a verified SR or a sign-off bundle carries; None for the AI's own output.
    signoff_id: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[str | None] = mapped_column(Text)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    #: ``pending`` → ``sent``; on failure ``retrying`` (with backoff) until ``dead``; a webhook is
    #: ``sending`` while its POST is under way (at most once: one found ``sending`` at start-up is not resent).
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("destination", "object_key", name="uq_writebacks_destination_object"),
        Index("ix_writebacks_due", "state", "next_attempt_at", "id"),
        Index("ix_writebacks_report", "report_id", "destination", "id"),
    )
