"""Tables of the model registry: which version is active or shadow (per app, or per routing rule), and the
comparison of each shadow run with the clinical run it shadowed."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

import interop.jobs.models  # noqa: F401  (the jobs table, which comparisons refer to)
from interop.store.models import Base, utcnow

#: The ``rule`` of an assignment that holds for every rule of the app.
ALL_RULES = ""


class ModelAssignment(Base):
    """``role`` (``active`` or ``shadow``) of ``version`` for ``app``, for one routing rule or (``rule`` empty)
    for all of them. No row: the app's own bundle is active and nothing runs in shadow."""

    __tablename__ = "model_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64), default=ALL_RULES)
    role: Mapped[str] = mapped_column(String(8))  # active | shadow
    version: Mapped[str] = mapped_column(String(64))
    #: Who changed it (the token's subject, or ``cli``) and when.
    changed_by: Mapped[str] = mapped_column(String(256))
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("app", "rule", "role", name="uq_model_assignments_app_rule_role"),)


class ShadowComparison(Base):
    """A shadow run beside its clinical run: whether they agree (None: one of them did not succeed)."""

    __tablename__ = "shadow_comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shadow_job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    active_job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    app: Mapped[str] = mapped_column(String(64))
    active_version: Mapped[str] = mapped_column(String(64))
    shadow_version: Mapped[str] = mapped_column(String(64))
    #: ``findings``, ``classification``, ``segmentation`` or ``incomplete``.
    kind: Mapped[str] = mapped_column(String(16))
    agree: Mapped[bool | None] = mapped_column(Boolean)
    #: The figure the verdict rests on: largest |Δp| (findings), share of classes equal (classification),
    #: smallest Dice (segmentation).
    score: Mapped[float | None] = mapped_column(Float)
    #: JSON: per finding / class / label, or why it is incomplete.
    detail: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_shadow_comparisons_versions", "app", "active_version", "shadow_version"),)
