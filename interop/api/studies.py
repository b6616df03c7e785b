"""The node's own API for study assembly: readiness events (what routing consumes) and study state."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BaseModel
from sqlalchemy import func, select

from interop.api.deps import CanReadImaging, NodeDep, check_study_patient, imaging_compartment
from interop.assembly import events_since
from interop.errors import Forbidden, NotFound
from interop.store.models import Instance, Series, Study

router = APIRouter(prefix="/api/studies", tags=["studies"])


def _utc(value: dt.datetime) -> dt.datetime:
    """Stored times are UTC; SQLite hands them back without a zone, so say which one they are."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_utc)]


class StudyEventOut(BaseModel):
    id: int
    study_uid: str
    kind: str
    series_count: int
    instance_count: int
    at: UtcDatetime


class StudyStateOut(BaseModel):
    study_uid: str
    state: str
    last_received_at: UtcDatetime
    series_count: int
    instance_count: int


@router.get("/events", response_model=list[StudyEventOut])
def list_events(
    node: NodeDep,
    who: CanReadImaging,
    after: Annotated[int, Query(ge=0, description="return events with id greater than this")] = 0,
    kind: Annotated[str | None, Query(pattern="^(ready|reopened)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[StudyEventOut]:
    """Study readiness events, oldest first; page with ``after=<last id>``. The log spans patients: not for a
    token confined to one patient."""
    if imaging_compartment(node, who) is not None:
        raise Forbidden("the study event log spans patients; a patient/-scoped token can't read it")
    return [
        StudyEventOut(id=e.id, study_uid=e.study_uid, kind=e.kind, series_count=e.series_count,
                      instance_count=e.instance_count, at=e.at)
        for e in events_since(node.db, after, limit, kind)
    ]


@router.get("/{study_uid}", response_model=StudyStateOut)
def study_state(study_uid: str, node: NodeDep, who: CanReadImaging) -> StudyStateOut:
    """Whether a study is still ``receiving`` or ``ready``, with its counts."""
    with node.db.reading() as s:
        study = s.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()
        if study is None:
            raise NotFound(f"study {study_uid} not found")
    check_study_patient(node, who, study_uid)
    with node.db.reading() as s:
        study = s.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        n_series = s.scalar(select(func.count(Series.id)).where(Series.study_pk == study.id)) or 0
        n_inst = s.scalar(select(func.count(Instance.id)).where(Instance.study_pk == study.id)) or 0
        return StudyStateOut(study_uid=study.study_uid, state=study.state, last_received_at=study.last_received_at,
                             series_count=n_series, instance_count=n_inst)
