"""Tables of reports and their sign-offs.

A report is made (``building``) in the same transaction as its job's success; the reporter then builds its
content (recommendations, text, FHIR bundle) and the write-backs it owes, and it is ``preliminary`` until a
physician's verdict::

    building ──▶ preliminary ──accept/amend──▶ final ──amend──▶ amended
        │             │                          │
        ▼             └──reject──▶ cancelled      └──reject──▶ entered-in-error
      failed (could not be built: the reason is kept, it is retried)

Every verdict is a ``signoffs`` row with the AI's original output beside it: the feedback table for retraining.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from interop.store.models import UID, Base, utcnow

REPORT_STATES = ("building", "failed", "preliminary", "final", "amended", "cancelled", "entered-in-error")


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    app: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    demonstration: Mapped[bool] = mapped_column(Boolean)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(UID)
    state: Mapped[str] = mapped_column(String(24), default="building")
    #: ``stat`` when a finding is above its critical threshold, else ``routine``.
    priority: Mapped[str] = mapped_column(String(8), default="routine")
    #: JSON list of the critical findings' names.
    critical: Mapped[str] = mapped_column(Text, default="[]")
    #: JSON: the report's inputs, recommendations and text (what its FHIR bundles are built from).
    content: Mapped[str | None] = mapped_column(Text)
    #: The latest SR of this report (the AI's, then each verified one): the next SR's predecessor.
    sr_sop_uid: Mapped[str | None] = mapped_column(UID)
    verdicts: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", name="uq_reports_job"),
        Index("ix_reports_state", "state", "priority", "created_at"),
        Index("ix_reports_patient", "patient_id"),
        Index("ix_reports_study", "study_uid"),
    )


class SignOff(Base):
    """A physician's verdict on a report, with the AI output it judged (the feedback export's rows)."""

    __tablename__ = "signoffs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(8))  # accept | amend | reject
    reader_id: Mapped[str] = mapped_column(String(256))
    reader_name: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(Text)
    conclusion: Mapped[str | None] = mapped_column(Text)
    #: JSON object: finding name -> the physician's present/absent, where it differs from or confirms the AI.
    findings: Mapped[str] = mapped_column(Text, default="{}")
    status_before: Mapped[str] = mapped_column(String(24))
    status_after: Mapped[str] = mapped_column(String(24))
    #: The AppResult JSON the verdict was given on.
    ai_output: Mapped[str] = mapped_column(Text)
    sr_sop_uid: Mapped[str | None] = mapped_column(UID)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("report_id", "sequence", name="uq_signoffs_report_sequence"),)
