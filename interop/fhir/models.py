"""Tables of the FHIR store: current resources, every version, and the search index.

Versioning follows FHIR R4 http.html §3.1.0.4 (vread) and §3.1.0.12 (history): every create, update
and delete makes a new ``versionId``; the current version is also kept on the ``fhir_resources`` row so a
read is one row. The index has one row per indexed value (see :mod:`interop.fhir.indexing`); searches filter
with ``pk IN (SELECT resource_pk FROM fhir_search_index WHERE res_type=… AND param=… AND …)``, each served
by a composite index that starts with (res_type, param).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from interop.store.models import Base


class FhirResource(Base):
    """The current version of one resource (a deleted one keeps its row, ``deleted`` set, for 410 Gone)."""

    __tablename__ = "fhir_resources"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(64))
    res_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The resource's JSON text, ``meta.versionId``/``meta.lastUpdated`` filled in; NULL once deleted.
    content: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("res_type", "res_id", name="uq_fhir_resources_type_id"),
        Index("ix_fhir_resources_type_deleted_pk", "res_type", "deleted", "pk"),
        Index("ix_fhir_resources_type_updated", "res_type", "last_updated"),
    )


class FhirVersion(Base):
    """Every version of every resource (``_history``); a delete is a version without content."""

    __tablename__ = "fhir_versions"

    resource_pk: Mapped[int] = mapped_column(
        ForeignKey("fhir_resources.pk", ondelete="CASCADE"), primary_key=True
    )
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    #: The HTTP verb that made the version (Bundle.entry.request.method in a history Bundle).
    method: Mapped[str] = mapped_column(String(8))
    content: Mapped[str | None] = mapped_column(Text)


class FhirSearchIndex(Base):
    """One searchable value of a resource's current version (rows are replaced on every write)."""

    __tablename__ = "fhir_search_index"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = mapped_column(ForeignKey("fhir_resources.pk", ondelete="CASCADE"))
    res_type: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[str | None] = mapped_column(String(255))
    low: Mapped[float | None] = mapped_column(Float(53))
    high: Mapped[float | None] = mapped_column(Float(53))

    __table_args__ = (
        Index("ix_fhir_idx_value", "res_type", "param", "value", "system", "resource_pk"),
        # Only date and quantity rows have low/high (a fifth of the rows): the others are left out of these two
        # indexes, which saves two index entries per token, reference and string row on every write. A range
        # condition (low >= x) implies low IS NOT NULL, so SQLite and PostgreSQL still use them.
        Index("ix_fhir_idx_low", "res_type", "param", "low", "resource_pk",
              sqlite_where=text("low IS NOT NULL"), postgresql_where=text("low IS NOT NULL")),
        Index("ix_fhir_idx_high", "res_type", "param", "high", "resource_pk",
              sqlite_where=text("high IS NOT NULL"), postgresql_where=text("high IS NOT NULL")),
        Index("ix_fhir_idx_resource", "resource_pk", "param", "value", "system"),
        # Reverse lookups (_revinclude, "is it still referenced?") go by target type and id.
        Index("ix_fhir_idx_target", "value", "system", "param"),
    )
