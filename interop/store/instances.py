"""Storing an instance: the one ingest path that both C-STORE and STOW-RS use.

Order of work (DESIGN promise 1): validate the file → move it durably into the blob store (fsync of the
file and its directory) → commit the index rows → only then does the caller acknowledge. A crash before
the commit leaves an object no row points at, which no query can see.

Idempotency (promise 2): the same SOP Instance UID with a byte-identical data set is a no-op that answers
success. A different data set under a stored UID follows ``duplicate_policy``:

* ``keep-first``: keep the stored copy, answer warning B006 "Elements discarded" (PS3.4 B.2.3);
* ``overwrite``: replace the stored copy, answer success;
* ``reject``: answer failure 0111 "Duplicate SOP Instance" (PS3.7 C.4.2).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Connection, CursorResult, Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from interop import metrics
from interop.config import DuplicatePolicy
from interop.errors import DatasetMismatch, DuplicateInstance
from interop.store.blobs import BlobStore
from interop.store.db import Database
from interop.store.dicomfile import (
    InstanceHeader,
    name_search_key,
    read_header,
    same_dataset,
)
from interop.store.models import Instance, Series, Study, StudyEvent

log = logging.getLogger(__name__)

SUCCESS = 0x0000
_PK_CACHE_SIZE = 10_000
_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_EVENTS = cast(Table, StudyEvent.__table__)
WARNING_ELEMENTS_DISCARDED = 0xB006


@dataclass(frozen=True, slots=True)
class StoreResult:
    status: int
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    #: True when this call wrote a new copy (False for a duplicate).
    stored: bool
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """Where a stored instance is and what it is, for retrieval."""

    sop_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    dataset_offset: int
    number_of_frames: int | None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _insert_ignore(conn: Connection, model: type[Any], values: dict[str, Any], key: str) -> None:
    ins: Any = postgresql.insert(model) if conn.dialect.name == "postgresql" else sqlite.insert(model)
    conn.execute(ins.values(**values).on_conflict_do_nothing(index_elements=[key]))


def _foreign_key_violation(exc: IntegrityError) -> bool:
    """SQLite's "FOREIGN KEY constraint failed", PostgreSQL's SQLSTATE 23503."""
    return getattr(exc.orig, "sqlstate", None) == "23503" or "FOREIGN KEY" in str(exc.orig)


def _study_values(h: InstanceHeader, now: dt.datetime) -> dict[str, Any]:
    return {
        "study_uid": h.study_uid,
        "patient_id": h.patient_id,
        "patient_name": h.patient_name,
        "patient_name_search": name_search_key(h.patient_name),
        "patient_birth_date": h.patient_birth_date,
        "patient_sex": h.patient_sex,
        "study_date": h.study_date,
        "study_time": h.study_time,
        "accession_number": h.accession_number,
        "study_id": h.study_id,
        "study_description": h.study_description,
        "referring_physician_name": h.referring_physician_name,
        "state": "receiving",
        "last_received_at": now,
        "created_at": now,
    }


def _series_values(h: InstanceHeader, study_pk: int) -> dict[str, Any]:
    return {
        "study_pk": study_pk,
        "series_uid": h.series_uid,
        "modality": h.modality,
        "series_number": h.series_number,
        "series_description": h.series_description,
        "body_part_examined": h.body_part_examined,
        "performed_start_date": h.performed_start_date,
        "performed_start_time": h.performed_start_time,
    }


def _instance_values(h: InstanceHeader) -> dict[str, Any]:
    return {
        "sop_uid": h.sop_uid,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "instance_number": h.instance_number,
        "rows": h.rows,
        "columns": h.columns,
        "bits_allocated": h.bits_allocated,
        "number_of_frames": h.number_of_frames,
        "size": h.size,
        "dataset_offset": h.dataset_offset,
    }


class InstanceStore:
    """The instance store: ingest, look-up and retrieval of Part 10 files."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        duplicate_policy: DuplicatePolicy = "keep-first",
        on_study_touched: Callable[[str, str | None], None] | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        #: Called with (study_uid, session key) before the index commit, so study assembly knows that a
        #: session is delivering to the study.
        self.on_study_touched = on_study_touched
        #: Stamps arrivals (``last_received_at``); study assembly compares it with its own clock.
        self.clock = clock
        #: Called before anything of an instance is stored; raises to refuse it (the free-space watermark,
        #: interop.store.space).
        self.admit: Callable[[], None] | None = None
        self._header_cache = lru_cache(maxsize=2048)(self._read_header_uncached)
        #: Committed primary keys by UID, so a study's later instances skip the look-ups.
        self._study_pks: dict[str, int] = {}
        self._series_pks: dict[str, tuple[int, int]] = {}

    # -- ingest ---------------------------------------------------------------------------------------

    def ingest(
        self,
        path: Path,
        *,
        source: str,
        calling_ae: str | None = None,
        expected_sop_class: str | None = None,
        expected_sop_uid: str | None = None,
        expected_study_uid: str | None = None,
        session_key: str | None = None,
    ) -> StoreResult:
        """Store the Part 10 file at ``path`` (which this call consumes) and return the outcome.

        ``expected_*`` are what the request said the instance is (the C-STORE command's Affected SOP
        Class/Instance UID, the study of a STOW-RS URL); a data set that says otherwise is refused (A900).

        Raises an :class:`~interop.errors.InteropError` subclass when it can't be stored; the file is
        removed either way.
        """
        size = path.stat().st_size if path.exists() else 0
        try:
            result = self._ingest(
                path, source, calling_ae, expected_sop_class, expected_sop_uid, expected_study_uid, session_key
            )
        except BaseException:
            metrics.INSTANCES.labels(source, "failed").inc()
            raise
        else:
            metrics.INSTANCES.labels(source, "stored" if result.stored else "duplicate").inc()
            if result.stored:
                metrics.BYTES.labels(source).inc(size)
            return result
        finally:
            if path.exists():
                path.unlink(missing_ok=True)

    def _ingest(
        self,
        path: Path,
        source: str,
        calling_ae: str | None,
        expected_sop_class: str | None,
        expected_sop_uid: str | None,
        expected_study_uid: str | None,
        session_key: str | None,
    ) -> StoreResult:
        if self.admit is not None:
            self.admit()
        # One pass: a data set cut short anywhere is refused (C210) before any attribute is judged (A900).
        h = read_header(path)
        for expected, actual, what, keyword in (
            (expected_sop_uid, h.sop_uid, "Affected SOP Instance UID", "SOPInstanceUID"),
            (expected_sop_class, h.sop_class_uid, "Affected SOP Class UID", "SOPClassUID"),
            (expected_study_uid, h.study_uid, "Study Instance UID of the request", "StudyInstanceUID"),
        ):
            if expected and expected.strip() != actual:
                raise DatasetMismatch(f"{what} {expected.strip()} differs from the data set's {actual}",
                                      expression=keyword, identity=(h.sop_class_uid, h.sop_uid))
        if self.on_study_touched is not None:
            self.on_study_touched(h.study_uid, session_key)
        key = self.blobs.new_key()
        self.blobs.put_file(path, key)
        try:
            try:
                self._index(h, key, source, calling_ae)
            except IntegrityError as exc:
                if not _foreign_key_violation(exc):
                    raise
                # The cached study/series keys name rows deleted since (retention, maybe by another process):
                # look them up again.
                self.forget_study(h.study_uid)
                self._index(h, key, source, calling_ae)
        except IntegrityError as exc:
            # The SOP Instance UID is stored already (the unique index says so; no look-up on the hot path).
            return self._arrived_again(h, key, source, calling_ae, exc)
        except BaseException:
            self.blobs.delete(key)
            raise
        return StoreResult(SUCCESS, h.sop_class_uid, h.sop_uid, h.study_uid, h.series_uid, stored=True)

    def _find(self, sop_uid: str) -> Instance | None:
        with self.db.reading() as s:
            return s.scalars(select(Instance).where(Instance.sop_uid == sop_uid)).one_or_none()

    def _arrived_again(
        self, h: InstanceHeader, key: str, source: str, calling_ae: str | None, exc: IntegrityError
    ) -> StoreResult:
        """A stored SOP Instance UID arrived again (its new copy is already at ``key``): apply the policy."""
        existing = self._find(h.sop_uid)
        if existing is None:  # the constraint that failed was not the SOP Instance UID's
            self.blobs.delete(key)
            raise exc
        result = dict(sop_class_uid=h.sop_class_uid, sop_uid=h.sop_uid, study_uid=h.study_uid,
                      series_uid=h.series_uid, stored=False)
        kept = False
        try:
            with self.blobs.open(key) as new, self.blobs.open(existing.blob_key) as old:
                identical = same_dataset(new, h.dataset_offset, old, existing.dataset_offset)
            if identical:
                return StoreResult(SUCCESS, comment="identical instance already stored", **result)  # type: ignore[arg-type]
            if self.duplicate_policy == "reject":
                raise DuplicateInstance(
                    f"SOP Instance UID {h.sop_uid} is already stored with a different data set",
                    expression="SOPInstanceUID",
                )
            if self.duplicate_policy == "keep-first":
                log.warning("instance %s arrived again with a different data set; kept the first copy", h.sop_uid)
                return StoreResult(
                    WARNING_ELEMENTS_DISCARDED,
                    comment="a different data set is already stored under this SOP Instance UID; kept the first",
                    **result,  # type: ignore[arg-type]
                )
            self._index(h, key, source, calling_ae, replace_pk=existing.id)
            kept = True
        finally:
            if not kept:
                self.blobs.delete(key)
        self.blobs.delete(existing.blob_key)  # overwrite: the replaced copy goes once the new one is indexed
        return StoreResult(SUCCESS, h.sop_class_uid, h.sop_uid, h.study_uid, h.series_uid, stored=True)

    def _study_pk(self, s: Connection, h: InstanceHeader, now: dt.datetime) -> int:
        pk = self._study_pks.get(h.study_uid)
        if pk is None:
            _insert_ignore(s, Study, _study_values(h, now), "study_uid")
            pk = s.scalars(select(Study.id).where(Study.study_uid == h.study_uid)).one()
        return pk

    def _series_pk(self, s: Connection, h: InstanceHeader, study_pk: int) -> tuple[int, int]:
        cached = self._series_pks.get(h.series_uid)
        if cached is None:
            _insert_ignore(s, Series, _series_values(h, study_pk), "series_uid")
            series_pk, owner = s.execute(
                select(Series.id, Series.study_pk).where(Series.series_uid == h.series_uid)
            ).one()
            cached = (series_pk, owner)
        return cached

    def _index(
        self, h: InstanceHeader, key: str, source: str, calling_ae: str | None, replace_pk: int | None = None
    ) -> None:
        """Commit the index rows for one instance (insert, or with ``replace_pk`` update that row).

        The common case is two statements: insert the instance, stamp the study. Study and series keys
        are cached once committed (rows are never renumbered; retention deletes them, and an insert that then
        fails on a foreign key makes :meth:`_ingest` forget the cached keys and index again).
        """
        now = self.clock()
        with self.db.write_tx() as s:
            study_pk = self._study_pk(s, h, now)
            series_pk, owner = self._series_pk(s, h, study_pk)
            if owner != study_pk:
                # A Series Instance UID is unique to one study (PS3.3 C.7.3.1); filing it under a second
                # study would tear the hierarchy that queries and retrieval walk.
                other = s.scalar(select(Study.study_uid).where(Study.id == owner))
                raise DatasetMismatch(
                    f"Series Instance UID {h.series_uid} is already stored under study {other}, not {h.study_uid}",
                    expression="SeriesInstanceUID",
                )
            values = _instance_values(h) | {
                "blob_key": key,
                "source": source,
                "calling_ae": calling_ae,
                "received_at": now,
                "series_pk": series_pk,
                "study_pk": study_pk,
            }
            if replace_pk is None:
                s.execute(insert(_INSTANCES).values(**values))
            else:
                s.execute(update(_INSTANCES).where(_INSTANCES.c.id == replace_pk).values(**values))
            studies = _STUDIES
            stamped = cast(CursorResult[Any], s.execute(
                update(studies)
                .where(studies.c.id == study_pk, studies.c.state == "receiving")
                .values(last_received_at=now)
            )).rowcount
            if not stamped:  # the study was ready: a later instance re-opens it
                s.execute(update(studies).where(studies.c.id == study_pk)
                          .values(state="receiving", last_received_at=now))
                s.execute(insert(_EVENTS).values(
                    study_uid=h.study_uid, kind="reopened", at=now, detail=f"instance {h.sop_uid}",
                    series_count=0, instance_count=0))
        self._remember(h.study_uid, study_pk, h.series_uid, (series_pk, owner))

    def _remember(self, study_uid: str, study_pk: int, series_uid: str, series: tuple[int, int]) -> None:
        if len(self._series_pks) > _PK_CACHE_SIZE:
            self._study_pks.clear()
            self._series_pks.clear()
        self._study_pks[study_uid] = study_pk
        self._series_pks[series_uid] = series

    def forget_study(self, study_uid: str) -> None:
        """Drop cached keys of a study (and all series) before its rows are deleted."""
        self._study_pks.clear()
        self._series_pks.clear()

    # -- look-up --------------------------------------------------------------------------------------

    def locate(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> list[StoredInstance]:
        """The stored instances of a study / series / one instance, in series then instance order."""
        q = (
            select(Instance, Series.series_uid, Study.study_uid)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Instance.study_pk == Study.id)
            .where(Study.study_uid == study_uid)
            .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
        )
        if series_uid is not None:
            q = q.where(Series.series_uid == series_uid)
        if sop_uid is not None:
            q = q.where(Instance.sop_uid == sop_uid)
        with self.db.reading() as s:
            rows = s.execute(q).all()
        return [
            StoredInstance(
                sop_uid=i.sop_uid,
                sop_class_uid=i.sop_class_uid,
                series_uid=se,
                study_uid=st,
                transfer_syntax_uid=i.transfer_syntax_uid,
                blob_key=i.blob_key,
                size=i.size,
                dataset_offset=i.dataset_offset,
                number_of_frames=i.number_of_frames,
            )
            for i, se, st in rows
        ]

    def read_header_dataset(self, blob_key: str) -> Dataset:
        """The data set of a stored file without pixel data (cached: stored files never change)."""
        return self._header_cache(blob_key)

    def _read_header_uncached(self, blob_key: str) -> Dataset:
        with self.blobs.open(blob_key) as fp:
            return dcmread(fp, stop_before_pixels=True, defer_size=4096)

    def orphan_blobs(self) -> list[str]:
        """Blob keys no index row points at (left by a crash between file and commit): neither an instance nor
        a job result's array."""
        from interop.jobs.models import JobResult

        with self.db.reading() as s:
            known = set(s.scalars(select(Instance.blob_key)))
            for arrays in s.scalars(select(JobResult.arrays)):
                known.update(json.loads(arrays).values())
        return [k for k in self.blobs.iter_keys() if k not in known]

