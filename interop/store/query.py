"""Matching stored studies, series and instances: one engine for C-FIND (PS3.4 C.2.2) and QIDO-RS
(PS3.18 §10.6, §8.3.4).

:func:`parse_query` turns ``keyword → value`` pairs (QIDO query parameters or a C-FIND identifier) into a
:class:`Query`; :func:`run_query` runs it against the index and returns one pydicom ``Dataset`` per match
holding the attributes asked for. Matching follows PS3.4 C.2.2.2: single value, list of UIDs, universal
(empty), wildcard (``*``, ``?``) and range (``A-B``, ``-B``, ``A-``) for dates and times. Person names
match case-insensitively; with ``fuzzy`` each word of the query matches the start of any name component.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from interop.errors import InvalidInput
from interop.store.dicomfile import name_search_key
from interop.store.models import Instance, Series, Study

Level = Literal["STUDY", "SERIES", "IMAGE"]
LEVELS: tuple[Level, ...] = ("STUDY", "SERIES", "IMAGE")
Match = Literal["uid", "text", "date", "time", "pn", "int", "modalities"]


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: Level
    match: Match
    column: InstrumentedAttribute[Any] | None = None


def _a(keyword: str, level: Level, match: Match, column: InstrumentedAttribute[Any] | None = None) -> Attr:
    return Attr(keyword, level, match, column)


#: Attributes the index can match on and return (the QIDO-RS defaults of PS3.18 Table 10.6.3-3/4/5).
ATTRS: dict[str, Attr] = {
    a.keyword: a
    for a in (
        _a("PatientID", "STUDY", "text", Study.patient_id),
        _a("PatientName", "STUDY", "pn", Study.patient_name),
        _a("PatientBirthDate", "STUDY", "date", Study.patient_birth_date),
        _a("PatientSex", "STUDY", "text", Study.patient_sex),
        _a("StudyInstanceUID", "STUDY", "uid", Study.study_uid),
        _a("StudyDate", "STUDY", "date", Study.study_date),
        _a("StudyTime", "STUDY", "time", Study.study_time),
        _a("AccessionNumber", "STUDY", "text", Study.accession_number),
        _a("StudyID", "STUDY", "text", Study.study_id),
        _a("StudyDescription", "STUDY", "text", Study.study_description),
        _a("ReferringPhysicianName", "STUDY", "pn", Study.referring_physician_name),
        _a("ModalitiesInStudy", "STUDY", "modalities"),
        _a("NumberOfStudyRelatedSeries", "STUDY", "int"),
        _a("NumberOfStudyRelatedInstances", "STUDY", "int"),
        _a("SeriesInstanceUID", "SERIES", "uid", Series.series_uid),
        _a("Modality", "SERIES", "text", Series.modality),
        _a("SeriesNumber", "SERIES", "int", Series.series_number),
        _a("SeriesDescription", "SERIES", "text", Series.series_description),
        _a("BodyPartExamined", "SERIES", "text", Series.body_part_examined),
        _a("PerformedProcedureStepStartDate", "SERIES", "date", Series.performed_start_date),
        _a("PerformedProcedureStepStartTime", "SERIES", "time", Series.performed_start_time),
        _a("NumberOfSeriesRelatedInstances", "SERIES", "int"),
        _a("SOPInstanceUID", "IMAGE", "uid", Instance.sop_uid),
        _a("SOPClassUID", "IMAGE", "uid", Instance.sop_class_uid),
        _a("InstanceNumber", "IMAGE", "int", Instance.instance_number),
        _a("Rows", "IMAGE", "int", Instance.rows),
        _a("Columns", "IMAGE", "int", Instance.columns),
        _a("BitsAllocated", "IMAGE", "int", Instance.bits_allocated),
        _a("NumberOfFrames", "IMAGE", "int", Instance.number_of_frames),
    )
}

#: Default return attributes per level (PS3.18 Table 10.6.3-3, -4, -5), besides those matched on.
DEFAULTS: dict[Level, tuple[str, ...]] = {
    "STUDY": (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "BodyPartExamined",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
              "NumberOfFrames"),
}

_LEVEL_INDEX = {lvl: i for i, lvl in enumerate(LEVELS)}


@dataclass
class Query:
    level: Level
    #: keyword → raw match value (DICOM string form)
    match: dict[str, str] = field(default_factory=dict)
    #: attributes to return besides the defaults; keywords, or ``all``
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    #: When set, only studies of these Patient IDs match (a ``patient/``-scoped token's compartment); an empty
    #: set matches nothing.
    patient_ids: frozenset[str] | None = None


def keyword_of(key: str) -> str:
    """A QIDO attribute id (keyword or ``ggggeeee`` tag) as a keyword; :class:`InvalidInput` if unknown."""
    key = key.strip()
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        from pydicom.datadict import keyword_for_tag

        kw = keyword_for_tag(Tag(int(key, 16)))
        if kw:
            return str(kw)
    elif tag_for_keyword(key) is not None:
        return key
    raise InvalidInput(f"unknown attribute {key!r}", expression=key)


def parse_query(
    level: Level,
    params: Iterable[tuple[str, str]],
    *,
    strict: bool = True,
) -> Query:
    """Build a :class:`Query` from QIDO-style ``(name, value)`` pairs.

    Besides attribute keywords/tags, understands ``includefield``, ``fuzzymatching``, ``limit``, ``offset``.
    With ``strict``, matching on an attribute the index doesn't hold is an error (PS3.18 §8.3.4.1 allows
    refusing it); otherwise it is ignored.
    """
    q = Query(level=level)
    for name, value in params:
        lname = name.lower()
        if lname == "includefield":
            for part in value.split(","):
                part = part.strip()
                if not part:
                    continue
                if part.lower() == "all":
                    q.include_all = True
                else:
                    q.include.add(keyword_of(part))
        elif lname == "fuzzymatching":
            q.fuzzy = value.strip().lower() == "true"
        elif lname in ("limit", "offset"):
            try:
                n = int(value)
            except ValueError:
                raise InvalidInput(f"{name} must be an integer, got {value!r}", expression=name) from None
            if n < 0:
                raise InvalidInput(f"{name} must not be negative", expression=name)
            if lname == "limit":
                q.limit = n
            else:
                q.offset = n
        else:
            kw = keyword_of(name)
            attr = ATTRS.get(kw)
            if attr is None or _LEVEL_INDEX[attr.level] > _LEVEL_INDEX[level] or (
                attr.column is None and attr.match != "modalities"
            ):
                if strict:
                    raise InvalidInput(f"matching on {kw} is not supported at {level.lower()} level", expression=kw)
                continue
            q.match[kw] = value
    return q


# -- matching ------------------------------------------------------------------------------------------


def _like_pattern(value: str) -> str:
    out = []
    for ch in value:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _is_wild(value: str) -> bool:
    return "*" in value or "?" in value


def _range(col: Any, value: str) -> ColumnElement[bool]:
    lo, _, hi = value.partition("-")
    lo, hi = lo.strip(), hi.strip()
    conds = []
    if lo:
        conds.append(col >= lo)
    if hi:
        # A date/time upper bound is inclusive of everything that starts with it ("1200" ≥ "120000.5").
        conds.append(col <= hi + "\uffff")
    if not conds:
        raise InvalidInput(f"empty range {value!r}")
    return and_(*conds)


def _condition(attr: Attr, value: str, fuzzy: bool) -> ColumnElement[bool] | None:
    value = value.strip()
    if value in ("", "*"):
        return None  # universal matching
    col = attr.column
    if attr.match == "modalities":
        mods = [m.strip() for m in value.replace(",", "\\").split("\\") if m.strip()]
        return exists().where(Series.study_pk == Study.id, Series.modality.in_(mods))
    assert col is not None
    if attr.match == "uid":
        uids = [u.strip() for u in value.replace(",", "\\").split("\\") if u.strip()]
        return col.in_(uids) if len(uids) > 1 else col == uids[0]
    if attr.match in ("date", "time") and "-" in value:
        return _range(col, value)
    if attr.match == "pn":
        search_col = Study.patient_name_search if attr.keyword == "PatientName" else func.upper(col)
        if fuzzy and attr.keyword == "PatientName":
            words = [w for w in value.upper().replace("^", " ").replace("*", " ").split() if w]
            return and_(*[search_col.like(f"%^{_like_pattern(w)}%", escape="\\") for w in words])
        if _is_wild(value):
            pattern = value.upper()
            if attr.keyword == "PatientName":
                wild_key = name_search_key(pattern.replace("*", "\x00").replace("?", "\x01")) or ""
                pattern = wild_key.replace("\x00", "*").replace("\x01", "?")
                return search_col.like(_like_pattern(pattern), escape="\\")
            return search_col.like(_like_pattern(pattern), escape="\\")
        key = name_search_key(value) if attr.keyword == "PatientName" else value.upper()
        return search_col == key
    if attr.match == "int":
        try:
            return col == int(value)
        except ValueError:
            raise InvalidInput(f"{attr.keyword} must be an integer, got {value!r}", expression=attr.keyword) from None
    if _is_wild(value):
        return col.like(_like_pattern(value), escape="\\")
    return col == value


def _select(q: Query) -> Any:
    if q.level == "STUDY":
        stmt: Any = select(Study)
    elif q.level == "SERIES":
        stmt = select(Series, Study).join(Study, Series.study_pk == Study.id)
    else:
        stmt = (
            select(Instance, Series, Study)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Instance.study_pk == Study.id)
        )
    conds = [c for kw, v in q.match.items() if (c := _condition(ATTRS[kw], v, q.fuzzy)) is not None]
    if q.patient_ids is not None:
        conds.append(Study.patient_id.in_(sorted(q.patient_ids)))
    if conds:
        stmt = stmt.where(*conds)
    if q.level == "STUDY":
        stmt = stmt.order_by(Study.study_date.desc(), Study.id.desc())
    elif q.level == "SERIES":
        stmt = stmt.order_by(Study.id, Series.series_number, Series.id)
    else:
        stmt = stmt.order_by(Study.id, Series.series_number, Series.id, Instance.instance_number, Instance.id)
    if q.offset:
        stmt = stmt.offset(q.offset)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    return stmt


# -- results -------------------------------------------------------------------------------------------


@dataclass
class Match_:
    """One matched row with its derived attributes, before it becomes a Dataset."""

    study: Study
    series: Series | None = None
    instance: Instance | None = None


def _counts(session: Session, rows: list[Match_], level: Level) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = {}  # kind -> pk -> count (or list of modalities)
    study_pks = list({r.study.id for r in rows})
    if not study_pks:
        return out
    if level == "STUDY":
        out["series"] = dict(
            session.execute(
                select(Series.study_pk, func.count(Series.id)).where(Series.study_pk.in_(study_pks))
                .group_by(Series.study_pk)
            ).all()
        )
        out["instances"] = dict(
            session.execute(
                select(Instance.study_pk, func.count(Instance.id)).where(Instance.study_pk.in_(study_pks))
                .group_by(Instance.study_pk)
            ).all()
        )
        mods: dict[int, list[str]] = {}
        for pk, mod in session.execute(
            select(Series.study_pk, Series.modality).where(Series.study_pk.in_(study_pks))
            .distinct().order_by(Series.modality)
        ):
            if mod:
                mods.setdefault(pk, []).append(mod)
        out["modalities"] = mods
    if level == "SERIES":
        series_pks = [r.series.id for r in rows if r.series is not None]
        out["series_instances"] = dict(
            session.execute(
                select(Instance.series_pk, func.count(Instance.id)).where(Instance.series_pk.in_(series_pks))
                .group_by(Instance.series_pk)
            ).all()
        )
    return out


def _value(kw: str, m: Match_, counts: Mapping[str, Mapping[int, Any]]) -> Any:
    if kw == "NumberOfStudyRelatedSeries":
        return counts.get("series", {}).get(m.study.id, 0)
    if kw == "NumberOfStudyRelatedInstances":
        return counts.get("instances", {}).get(m.study.id, 0)
    if kw == "ModalitiesInStudy":
        return counts.get("modalities", {}).get(m.study.id) or None
    if kw == "NumberOfSeriesRelatedInstances":
        return counts.get("series_instances", {}).get(m.series.id, 0) if m.series else None
    attr = ATTRS[kw]
    owner = {"STUDY": m.study, "SERIES": m.series, "IMAGE": m.instance}[attr.level]
    if owner is None or attr.column is None:
        return None
    return getattr(owner, attr.column.key)


def representative_blob(session: Session, m: Match_) -> str | None:
    """The blob key of one instance under a match, for attributes the index doesn't hold."""
    if m.instance is not None:
        return m.instance.blob_key
    stmt = select(Instance.blob_key)
    stmt = stmt.where(Instance.series_pk == m.series.id) if m.series else stmt.where(Instance.study_pk == m.study.id)
    return session.scalars(stmt.order_by(Instance.id).limit(1)).first()


def _set(ds: Dataset, kw: str, value: Any) -> None:
    tag = tag_for_keyword(kw)
    if tag is None:
        return
    vr = dictionary_VR(tag)
    if value is None:
        ds.add_new(tag, vr, None)
    elif vr in ("IS", "US", "UL", "SL", "SS"):
        ds.add_new(tag, vr, int(value))
    else:
        ds.add_new(tag, vr, value)


def returned_keywords(q: Query) -> list[str]:
    """Attributes every result of ``q`` carries (PS3.18 §10.6.3.3: defaults, matched, includefield)."""
    lvl = _LEVEL_INDEX[q.level]
    kws: list[str] = []
    for level in LEVELS[: lvl + 1]:
        kws.extend(DEFAULTS[level])
    if q.include_all:  # "all available": every attribute the index holds at this level and above
        kws.extend(kw for kw, a in ATTRS.items() if _LEVEL_INDEX[a.level] <= lvl and kw not in kws)
    for kw in list(q.match) + sorted(q.include):
        if kw not in kws:
            kws.append(kw)
    return kws


def run_query(
    session: Session,
    q: Query,
    *,
    keywords: list[str] | None = None,
    header_reader: Callable[[str], Dataset] | None = None,
    keep_empty: bool = False,
) -> list[Dataset]:
    """Run ``q`` and build one Dataset per match with ``keywords`` (default :func:`returned_keywords`).

    Attributes the index doesn't hold are read with ``header_reader(blob_key)`` from one instance under
    the match (for ``includefield``); with ``keep_empty`` absent values are returned empty (C-FIND),
    otherwise left out (QIDO, PS3.18 §10.6.3.3).
    """
    rows: list[Match_] = []
    for row in session.execute(_select(q)):
        if q.level == "STUDY":
            rows.append(Match_(study=row[0]))
        elif q.level == "SERIES":
            rows.append(Match_(series=row[0], study=row[1]))
        else:
            rows.append(Match_(instance=row[0], series=row[1], study=row[2]))
    counts = _counts(session, rows, q.level)
    wanted = keywords if keywords is not None else returned_keywords(q)
    out: list[Dataset] = []
    for m in rows:
        ds = Dataset()
        extra: list[str] = []
        for kw in wanted:
            if kw in ATTRS:
                v = _value(kw, m, counts)
                if v is not None or keep_empty:
                    _set(ds, kw, v)
            else:
                extra.append(kw)
        if extra and header_reader is not None:
            key = representative_blob(session, m)
            header = header_reader(key) if key is not None else Dataset()
            for kw in extra:
                tag = tag_for_keyword(kw)
                elem = header.get(tag) if tag is not None else None  # absent: None (data_element raises)
                if elem is not None:
                    ds[elem.tag] = elem
                elif keep_empty:
                    _set(ds, kw, None)
        elif keep_empty:
            for kw in extra:
                _set(ds, kw, None)
        out.append(ds)
    return out
