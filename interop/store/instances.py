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
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from interop.config import DuplicatePolicy
from interop.errors import DatasetMismatch, DuplicateInstance, NotFound
from interop.store.blobs import BlobStore
from interop.store.db import Database
from interop.store.dicomfile import (
    InstanceHeader,
    check_complete,
    dataset_layout,
    name_search_key,
    read_header,
    same_dataset,
)
from interop.store.models import Instance, Series, Study, StudyEvent

log = logging.getLogger(__name__)

SUCCESS = 0x0000
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


def _insert_ignore(session: Session, model: type[Any], values: dict[str, Any], key: str) -> None:
    dialect = session.get_bind().dialect.name
    ins: Any = postgresql.insert(model) if dialect == "postgresql" else sqlite.insert(model)
    session.execute(ins.values(**values).on_conflict_do_nothing(index_elements=[key]))


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
        self._header_cache = lru_cache(maxsize=2048)(self._read_header_uncached)

    # -- ingest ---------------------------------------------------------------------------------------

    def ingest(
        self,
        path: Path,
        *,
        source: str,
        calling_ae: str | None = None,
        expected_sop_class: str | None = None,
        expected_sop_uid: str | None = None,
        session_key: str | None = None,
    ) -> StoreResult:
        """Store the Part 10 file at ``path`` (which this call consumes) and return the outcome.

        Raises an :class:`~interop.errors.InteropError` subclass when it can't be stored; the file is
        removed either way.
        """
        try:
            return self._ingest(path, source, calling_ae, expected_sop_class, expected_sop_uid, session_key)
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
        session_key: str | None,
    ) -> StoreResult:
        try:
            h = read_header(path)
        except DatasetMismatch:
            # A data set cut short loses attributes as well; report the more basic fault, the truncation
            # (C210 rather than A900), when that is what happened.
            check_complete(path, *dataset_layout(path))
            raise
        if expected_sop_uid and expected_sop_uid.strip() != h.sop_uid:
            raise DatasetMismatch(
                f"Affected SOP Instance UID {expected_sop_uid} differs from the data set's {h.sop_uid}",
                expression="SOPInstanceUID",
            )
        if expected_sop_class and expected_sop_class.strip() != h.sop_class_uid:
            raise DatasetMismatch(
                f"Affected SOP Class UID {expected_sop_class} differs from the data set's {h.sop_class_uid}",
                expression="SOPClassUID",
            )
        check_complete(path, h.dataset_offset, h.transfer_syntax_uid)

        replace: Instance | None = None
        existing = self._find(h.sop_uid)
        if existing is not None:
            outcome = self._duplicate(existing, path, h)
            if outcome is not None:
                return outcome
            replace = existing

        if self.on_study_touched is not None:
            self.on_study_touched(h.study_uid, session_key)
        key = self.blobs.new_key()
        self.blobs.put_file(path, key)
        try:
            old_key = self._index(h, key, source, calling_ae, replace)
        except IntegrityError:
            # Another session stored the same SOP Instance UID between our look-up and our commit.
            self.blobs.delete(key)
            again = self._find(h.sop_uid)
            if again is None:
                raise
            return StoreResult(SUCCESS, h.sop_class_uid, h.sop_uid, h.study_uid, h.series_uid, stored=False,
                               comment="stored concurrently by another session")
        except BaseException:
            self.blobs.delete(key)
            raise
        if old_key:
            self.blobs.delete(old_key)
        return StoreResult(SUCCESS, h.sop_class_uid, h.sop_uid, h.study_uid, h.series_uid, stored=True)

    def _find(self, sop_uid: str) -> Instance | None:
        with self.db.reading() as s:
            return s.scalars(select(Instance).where(Instance.sop_uid == sop_uid)).one_or_none()

    def _duplicate(self, existing: Instance, path: Path, h: InstanceHeader) -> StoreResult | None:
        """Decide what a second arrival of a stored SOP Instance UID does; ``None`` means overwrite."""
        with open(path, "rb") as new, self.blobs.open(existing.blob_key) as old:
            identical = same_dataset(new, h.dataset_offset, old, existing.dataset_offset)
        result = dict(sop_class_uid=h.sop_class_uid, sop_uid=h.sop_uid, study_uid=h.study_uid,
                      series_uid=h.series_uid, stored=False)
        if identical:
            return StoreResult(SUCCESS, comment="identical instance already stored", **result)  # type: ignore[arg-type]
        if self.duplicate_policy == "reject":
            raise DuplicateInstance(
                f"SOP Instance UID {h.sop_uid} is already stored with a different data set", expression="SOPInstanceUID"
            )
        if self.duplicate_policy == "keep-first":
            log.warning("instance %s arrived again with a different data set; kept the first copy", h.sop_uid)
            return StoreResult(
                WARNING_ELEMENTS_DISCARDED,
                comment="a different data set is already stored under this SOP Instance UID; kept the first",
                **result,  # type: ignore[arg-type]
            )
        return None

    def _index(
        self, h: InstanceHeader, key: str, source: str, calling_ae: str | None, replace: Instance | None
    ) -> str | None:
        """Commit the index rows; returns the blob key an overwrite made obsolete."""
        now = self.clock()
        with self.db.writing() as s:
            _insert_ignore(s, Study, _study_values(h, now), "study_uid")
            study = s.scalars(select(Study).where(Study.study_uid == h.study_uid)).one()
            _insert_ignore(s, Series, _series_values(h, study.id), "series_uid")
            series_pk, series_study_pk = s.execute(
                select(Series.id, Series.study_pk).where(Series.series_uid == h.series_uid)
            ).one()
            if series_study_pk != study.id:
                # A Series Instance UID is unique to one study (PS3.3 C.7.3.1); filing it under a second
                # study would tear the hierarchy that queries and retrieval walk.
                other = s.scalar(select(Study.study_uid).where(Study.id == series_study_pk))
                raise DatasetMismatch(
                    f"Series Instance UID {h.series_uid} is already stored under study {other}, not {h.study_uid}",
                    expression="SeriesInstanceUID",
                )
            if study.state != "receiving":
                s.add(StudyEvent(study_uid=h.study_uid, kind="reopened", at=now, detail=f"instance {h.sop_uid}"))
                study.state = "receiving"
            study.last_received_at = now
            values = _instance_values(h) | {
                "blob_key": key,
                "source": source,
                "calling_ae": calling_ae,
                "received_at": now,
                "series_pk": series_pk,
                "study_pk": study.id,
            }
            if replace is not None:
                row = s.get(Instance, replace.id)
                if row is None:
                    raise NotFound(f"instance {h.sop_uid} vanished during overwrite")
                old = row.blob_key
                for k, v in values.items():
                    setattr(row, k, v)
                return old
            s.add(Instance(**values))
        return None

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
        """Blob keys no index row points at (left by a crash between file and commit)."""
        with self.db.reading() as s:
            known = set(s.scalars(select(Instance.blob_key)))
        return [k for k in self.blobs.iter_keys() if k not in known]

