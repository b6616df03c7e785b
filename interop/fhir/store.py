"""The FHIR resource store: versioned CRUD, search, history and Bundles (FHIR R4 http.html).

All writes go through :meth:`FhirStore._write`, which bumps ``versionId``, stamps ``meta.lastUpdated``,
keeps the version in ``fhir_versions`` and replaces the resource's search-index rows, in the caller's
transaction. An update whose content equals the current version's (server-managed ``meta.versionId`` and
``meta.lastUpdated`` aside) writes nothing and answers the current version, as HAPI FHIR does: re-sent
result Bundles (exactly-once delivery) leave no new versions behind.

Every public method takes an optional ORM ``session`` (or a Core ``Connection``): given, it runs inside its
transaction and the caller commits (the HL7 listener commits the raw message and its resources together);
otherwise a write opens :meth:`Database.write_tx`, which commits before returning, so a 2xx is sent only
after a durable commit. The store reads and writes Core rows only, never ORM objects: there is no unit of
work to flush and no copy of a resource in a session that could go stale.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import Connection, Table, and_, bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from interop.errors import (
    Conflict,
    Gone,
    InteropError,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
)
from interop.fhir.indexing import index_rows, split_reference
from interop.fhir.models import FhirResource, FhirSearchIndex, FhirVersion
from interop.fhir.registry import RESOURCES
from interop.fhir.search import SearchRequest, order_by, parse_search
from interop.fhir.validation import served_type, valid_id, validate_resource
from interop.store.db import Database

_REFERENCE_PARAMS = frozenset(p.name for d in RESOURCES.values() for p in d.params if p.kind == "reference")

#: The columns of a resource's current row as the store reads them: Core rows, not ORM objects.
_CURRENT = (FhirResource.pk, FhirResource.res_type, FhirResource.res_id, FhirResource.version_id,
            FhirResource.last_updated, FhirResource.deleted, FhirResource.content)
#: A row with those columns (``sqlalchemy.engine.Row``; attribute access as on the ORM object).
Current = Any
_VERSION = (FhirVersion.version_id, FhirVersion.last_updated, FhirVersion.method, FhirVersion.content)
#: What the public methods accept as the caller's transaction.
Tx = Session | Connection
_RESOURCES = cast(Table, FhirResource.__table__)
_INDEX = cast(Table, FhirSearchIndex.__table__)
_INSERT_RESOURCES = insert(_RESOURCES).returning(_RESOURCES.c.pk, sort_by_parameter_order=True)
_UPDATE_RESOURCES = update(_RESOURCES).where(_RESOURCES.c.pk == bindparam("b_pk")).values(
    version_id=bindparam("b_version"), last_updated=bindparam("b_updated"), deleted=bindparam("b_deleted"),
    content=bindparam("b_content"))
_INSERT_VERSIONS = insert(cast(Table, FhirVersion.__table__))
_INSERT_INDEX = insert(_INDEX)
#: ``match`` for one ``token=system|code`` parameter (a conditional on an identifier: the HL7 feed's every
#: entry): the statement :func:`parse_search` and ``SearchRequest.where`` build for it, built once.
_TOKEN_MATCH = select(*_CURRENT).where(
    FhirResource.res_type == bindparam("m_type"), FhirResource.deleted.is_(False),
    FhirResource.pk.in_(select(FhirSearchIndex.resource_pk).where(
        FhirSearchIndex.res_type == bindparam("m_type"), FhirSearchIndex.param == bindparam("m_param"),
        and_(FhirSearchIndex.value == bindparam("m_code"), FhirSearchIndex.system == bindparam("m_system")))),
).limit(2)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def instant(ts: dt.datetime) -> str:
    """A FHIR ``instant`` (datatypes.html §2.24.0.1) in UTC with milliseconds."""
    if ts.tzinfo is None:  # SQLite hands back naive UTC datetimes
        ts = ts.replace(tzinfo=dt.UTC)
    return ts.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def etag(version: int) -> str:
    """A weak ETag for a version (http.html §3.1.0.5 "Managing Resource Contention")."""
    return f'W/"{version}"'


def parse_etag(value: str) -> int:
    """The version named by an ``If-Match`` value: ``W/"3"``, ``"3"`` or ``3``."""
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    try:
        return int(v)
    except ValueError:
        raise InvalidInput(f"If-Match '{value}' is not a version ETag (W/\"n\")", expression="If-Match") from None


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of a read or write: the resource as stored and how it came to be."""

    resource: dict[str, Any]
    type: str
    id: str
    version_id: int
    last_updated: dt.datetime
    #: HTTP status of the interaction: 201 created, 200 updated/read/matched.
    status: int = 200

    @property
    def etag(self) -> str:
        return etag(self.version_id)

    @property
    def location(self) -> str:
        return f"{self.type}/{self.id}/_history/{self.version_id}"


def _utc(ts: dt.datetime) -> dt.datetime:
    """A stored timestamp in UTC (SQLite hands back naive UTC, PostgreSQL the session's zone)."""
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


def _stored(row: Current, status: int = 200, resource: dict[str, Any] | None = None) -> Stored:
    if row.content is None:
        raise Gone(f"{row.res_type}/{row.res_id} was deleted")
    return Stored(resource if resource is not None else json.loads(row.content), row.res_type, row.res_id,
                  row.version_id, _utc(row.last_updated), status)


def _conn(tx: Tx) -> Connection:
    return tx.connection() if isinstance(tx, Session) else tx


def _compared(resource: dict[str, Any]) -> str:
    """A resource as two versions are compared for a no-op update: canonical JSON (keys sorted) without ``id``
    and the server-managed ``meta.versionId``/``meta.lastUpdated``; an empty ``meta`` is no ``meta``. ``2`` and
    ``2.0`` differ, as FHIR decimals keep their precision (datatypes.html §2.24.0.1)."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    if meta:
        body["meta"] = meta
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Batch:
    """Writes gathered while a transaction runs, sent as one statement per table (executemany): the new
    ``fhir_resources`` rows (their keys come back by RETURNING, in order), the updated ones, the replaced
    index rows (one DELETE), the versions and the index rows."""

    __slots__ = ("new", "children", "updates", "reindex", "versions", "index", "keys")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.new: list[dict[str, Any]] = []
        #: Per new row: its version and index rows, which get its key once it is inserted.
        self.children: list[list[dict[str, Any]]] = []
        self.updates: list[dict[str, Any]] = []
        self.reindex: list[int] = []
        self.versions: list[dict[str, Any]] = []
        self.index: list[dict[str, Any]] = []
        #: (type, id) of every write not yet sent.
        self.keys: set[tuple[str, str]] = set()

    def flush(self, conn: Connection) -> None:
        if not self.keys:
            return
        if self.new:
            pks = conn.execute(_INSERT_RESOURCES, self.new).scalars().all()
            for pk, children in zip(pks, self.children, strict=True):
                for child in children:
                    child["resource_pk"] = pk
        if self.updates:
            conn.execute(_UPDATE_RESOURCES, self.updates)
        if self.reindex:
            conn.execute(delete(_INDEX).where(_INDEX.c.resource_pk.in_(self.reindex)))
        if self.versions:
            conn.execute(_INSERT_VERSIONS, self.versions)
        if self.index:
            conn.execute(_INSERT_INDEX, self.index)
        self.clear()


class FhirStore:
    """Versioned FHIR R4 resources with a search index, over :class:`Database` (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- sessions ---------------------------------------------------------------------------------------

    @contextmanager
    def _writing(self, tx: Tx | None) -> Iterator[Connection]:
        """The caller's transaction, or a new write transaction that commits (durably) on exit."""
        if tx is not None:
            yield _conn(tx)
        else:
            with self.db.write_tx() as conn:
                yield conn

    @contextmanager
    def _reading(self, tx: Tx | None) -> Iterator[Connection]:
        if tx is not None:
            yield _conn(tx)
        else:
            with self.db.engine.connect() as conn:
                yield conn

    def _lock(self, conn: Connection, key: str) -> None:
        """Serialise conditional writes on one condition. SQLite writers are already serial (BEGIN
        IMMEDIATE); on PostgreSQL a transaction-scoped advisory lock keeps two concurrent conditional
        creates of the same identifier from both creating (DESIGN promise 2)."""
        if not self.db.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(key.encode()) - 2**31})

    # -- the one write path -----------------------------------------------------------------------------

    def _row(self, conn: Connection, type_: str, id_: str, *, for_update: bool = False) -> Current | None:
        q = select(*_CURRENT).where(FhirResource.res_type == type_, FhirResource.res_id == id_)
        if for_update and not self.db.is_sqlite:
            q = q.with_for_update()
        return conn.execute(q).first()

    def _write(self, conn: Connection, row: Current | None, type_: str, id_: str,
               data: dict[str, Any] | None, method: str, batch: _Batch | None = None) -> Stored:
        """Store a new version of ``type_/id_`` (``data`` None: a delete) and re-index it. With ``batch`` the
        statements are gathered there (the caller flushes it); otherwise they are sent at once."""
        now = _now()
        if row is not None and row.last_updated is not None:
            prev = _utc(row.last_updated)
            now = max(now, prev + dt.timedelta(milliseconds=1))  # lastUpdated strictly grows per resource
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        version = (row.version_id + 1) if row is not None else 1
        #: 201 when the write brings the resource into existence (new, or re-created after a delete).
        status = 201 if (row is None or row.deleted) and data is not None else 200
        content: str | None = None
        resource: dict[str, Any] = {}
        if data is not None:
            meta = {k: v for k, v in (data.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
            resource = {"resourceType": type_, "id": id_,
                        "meta": {"versionId": str(version), "lastUpdated": instant(now), **meta}}
            resource.update({k: v for k, v in data.items() if k not in ("resourceType", "id", "meta")})
            content = json.dumps(resource, separators=(",", ":"), ensure_ascii=False)
        b = batch if batch is not None else _Batch()
        pk = row.pk if row is not None else None
        children: list[dict[str, Any]] = []
        children.append({"resource_pk": pk, "version_id": version, "last_updated": now, "method": method,
                         "content": content})
        b.versions.append(children[0])
        if data is not None:
            rows = [{"resource_pk": pk, "res_type": type_, "param": r.param, "system": r.system,
                     "value": r.value, "low": r.low, "high": r.high} for r in index_rows(resource)]
            children.extend(rows)
            b.index.extend(rows)
        if row is None:
            b.new.append({"res_type": type_, "res_id": id_, "version_id": version, "last_updated": now,
                          "deleted": data is None, "content": content})
            b.children.append(children)
        else:
            b.updates.append({"b_pk": row.pk, "b_version": version, "b_updated": now, "b_deleted": data is None,
                              "b_content": content})
            b.reindex.append(row.pk)
        b.keys.add((type_, id_))
        if batch is None:
            b.flush(conn)
        return Stored(resource, type_, id_, version, now, status)

    # -- conditional matching ---------------------------------------------------------------------------

    def match(self, session: Tx, type_: str, query: str) -> list[Current]:
        """Live resources of ``type_`` matching a search query string (``identifier=sys|val``), for
        conditional create/update (http.html §3.1.0.8, §3.1.0.10.2). Unknown parameters are errors."""
        params = parse_qsl(query.lstrip("?"), keep_blank_values=True)
        if not params:
            raise InvalidInput("a conditional operation needs search parameters", expression="If-None-Exist")
        defn = served_type(type_)
        if len(params) == 1:
            name, value = params[0]
            param = defn.param(name) if ":" not in name else None
            system, bar, code = value.partition("|")
            if (param is not None and param.kind == "token" and bar and system and code
                    and "," not in value and "\\" not in value):
                return list(_conn(session).execute(
                    _TOKEN_MATCH, {"m_type": type_, "m_param": name, "m_code": code, "m_system": system}))
        req = parse_search(defn, params, strict=True)
        q = select(*_CURRENT).where(FhirResource.res_type == type_, FhirResource.deleted.is_(False),
                                    *req.where()).limit(2)
        return list(_conn(session).execute(q))

    # -- create / update / delete -----------------------------------------------------------------------

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None,
               session: Tx | None = None, type_: str | None = None) -> Stored:
        """Create with a server-assigned id (http.html §3.1.0.7); with ``if_none_exist`` a conditional
        create (§3.1.0.8): one match → that resource (status 200), several → 412, none → create."""
        defn = validate_resource(resource, type_)
        with self._writing(session) as conn:
            if if_none_exist:
                self._lock(conn, f"{defn.type}?{if_none_exist}")
                found = self.match(conn, defn.type, if_none_exist)
                if len(found) > 1:
                    raise PreconditionFailed(f"If-None-Exist '{if_none_exist}' matches more than one {defn.type}")
                if found:
                    return _stored(found[0], 200)
            return self._write(conn, None, defn.type, str(uuid.uuid4()), resource, "POST")

    def create_many(self, resources: list[dict[str, Any]], *, session: Tx | None = None) -> list[Stored]:
        """Create resources that the node itself built (its AuditEvents), as one batch of inserts per table.
        Not for anything a client sent: there is no model validation per write (the builders are pure and
        tested against the official R4 JSON schema), only the type check."""
        for r in resources:
            served_type(str(r.get("resourceType")))
        batch = _Batch()
        with self._writing(session) as conn:
            out = [self._write(conn, None, str(r["resourceType"]), str(uuid.uuid4()), r, "POST", batch)
                   for r in resources]
            batch.flush(conn)
        return out

    def update(self, type_: str, id_: str, resource: dict[str, Any], *, if_match: str | None = None,
               session: Tx | None = None) -> Stored:
        """Update (or create with a client id) ``type_/id_`` (http.html §3.1.0.4); ``if_match`` must name
        the current version (§3.1.0.5) or the update fails with 412 (409 when the resource is absent).
        Content equal to the current version's writes nothing: the answer is that version (200)."""
        validate_resource(resource, type_)
        return self._update(type_, id_, resource, if_match, session)

    def _update(self, type_: str, id_: str, resource: dict[str, Any], if_match: str | None,
                session: Tx | None) -> Stored:
        """:meth:`update` of a resource already validated."""
        valid_id(id_)
        if resource.get("id") != id_:
            raise InvalidInput(f"the resource's id ({resource.get('id')!r}) must match the URL id ({id_!r})",
                               expression=f"{type_}.id")
        with self._writing(session) as conn:
            row = self._row(conn, type_, id_, for_update=True)
            return self._put(conn, row, type_, id_, resource, if_match)

    def _put(self, conn: Connection, row: Current | None, type_: str, id_: str, resource: dict[str, Any],
             if_match: str | None, batch: _Batch | None = None) -> Stored:
        """Update ``row`` (the current one; None: absent) to ``resource`` after the ``If-Match`` check. When
        the content is the current version's, nothing is written and that version is the answer (no new
        version, no history entry, ``lastUpdated`` kept), as HAPI FHIR does by default."""
        if if_match is not None:
            wanted = parse_etag(if_match)
            if row is None or row.deleted:
                raise Conflict(f"{type_}/{id_} does not exist, so If-Match {if_match} cannot hold")
            if row.version_id != wanted:
                raise PreconditionFailed(
                    f"version conflict: {type_}/{id_} is at version {row.version_id}, If-Match named {wanted}"
                )
        if row is not None and row.content is not None:
            current = json.loads(row.content)
            if _compared(current) == _compared({**resource, "resourceType": type_}):
                return _stored(row, 200, current)
        return self._write(conn, row, type_, id_, resource, "PUT", batch)

    def conditional_update(self, type_: str, query: str, resource: dict[str, Any], *,
                           if_match: str | None = None, session: Tx | None = None) -> Stored:
        """``PUT Type?query`` (http.html §3.1.0.10.2): no match → create (with the body's id or a new one),
        one match → update it (or nothing, as :meth:`update`, when the content is unchanged), several → 412."""
        validate_resource(resource, type_)
        with self._writing(session) as conn:
            self._lock(conn, f"{type_}?{query}")
            found = self.match(conn, type_, query)
            if len(found) > 1:
                raise PreconditionFailed(f"'{type_}?{query}' matches more than one resource")
            if found:
                id_ = found[0].res_id
                if resource.get("id") not in (None, id_):
                    raise InvalidInput(f"the resource's id does not match the resource '{type_}?{query}' found",
                                       expression=f"{type_}.id")
            else:
                id_ = valid_id(resource["id"]) if resource.get("id") else str(uuid.uuid4())
            return self._update(type_, id_, {**resource, "id": id_}, if_match, conn)

    def delete(self, type_: str, id_: str, *, session: Tx | None = None) -> None:
        """Delete (http.html §3.1.0.6): a new version without content; reads then answer 410. Refused
        (409) while another live resource still references it, so no stored reference dangles. Deleting an
        absent or already deleted resource succeeds (idempotent)."""
        served_type(type_)
        with self._writing(session) as conn:
            row = self._row(conn, type_, id_, for_update=True)
            if row is None or row.deleted:
                return
            referrer = conn.execute(
                select(FhirSearchIndex.res_type, FhirResource.res_id)
                .join(FhirResource, FhirResource.pk == FhirSearchIndex.resource_pk)
                .where(FhirSearchIndex.value == id_, FhirSearchIndex.system == type_,
                       FhirSearchIndex.param.in_(_REFERENCE_PARAMS), FhirSearchIndex.resource_pk != row.pk)
                .limit(1)
            ).first()
            if referrer is not None:
                raise Conflict(f"{type_}/{id_} is referenced by {referrer[0]}/{referrer[1]}; delete that first")
            self._write(conn, row, type_, id_, None, "DELETE")

    # -- reads --------------------------------------------------------------------------------------------

    def read(self, type_: str, id_: str, *, session: Tx | None = None) -> Stored:
        """Read the current version (http.html §3.1.0.2): 404 unknown, 410 deleted."""
        served_type(type_)
        with self._reading(session) as conn:
            row = self._row(conn, type_, id_)
            if row is None:
                raise NotFound(f"{type_}/{id_} is not known")
            return _stored(row)

    def vread(self, type_: str, id_: str, version: int, *, session: Tx | None = None) -> Stored:
        """Read one version (http.html §3.1.0.3): 404 unknown, 410 for the version that deleted it."""
        served_type(type_)
        with self._reading(session) as conn:
            row = self._row(conn, type_, id_)
            v = conn.execute(select(*_VERSION).where(FhirVersion.resource_pk == row.pk,
                                                     FhirVersion.version_id == version)).first() if row else None
            if row is None or v is None:
                raise NotFound(f"{type_}/{id_}/_history/{version} is not known")
            if v.content is None:
                raise Gone(f"{type_}/{id_} version {version} is its deletion")
            return Stored(json.loads(v.content), type_, id_, v.version_id, _utc(v.last_updated))

    def history(self, type_: str, id_: str, *, base: str, count: int = 100) -> dict[str, Any]:
        """Instance history (http.html §3.1.0.12): a ``history`` Bundle, newest version first."""
        served_type(type_)
        with self._reading(None) as conn:
            row = self._row(conn, type_, id_)
            if row is None:
                raise NotFound(f"{type_}/{id_} is not known")
            versions = list(conn.execute(select(*_VERSION).where(FhirVersion.resource_pk == row.pk)
                                         .order_by(FhirVersion.version_id.desc()).limit(count)))
            total = conn.scalar(select(func.count()).where(FhirVersion.resource_pk == row.pk))
        entries = []
        for v in versions:
            entry: dict[str, Any] = {"fullUrl": f"{base}/{type_}/{id_}",
                                     "request": {"method": v.method,
                                                 "url": type_ if v.method == "POST" else f"{type_}/{id_}"},
                                     "response": {"status": "410 Gone" if v.content is None else
                                                  ("201 Created" if v.method == "POST" else "200 OK"),
                                                  "etag": etag(v.version_id),
                                                  "lastModified": instant(v.last_updated)}}
            if v.content is not None:
                entry["resource"] = json.loads(v.content)
            entries.append(entry)
        return {"resourceType": "Bundle", "type": "history", "total": total,
                "link": [{"relation": "self", "url": f"{base}/{type_}/{id_}/_history"}], "entry": entries}

    # -- search -------------------------------------------------------------------------------------------

    def search(self, type_: str, params: list[tuple[str, str]], *, base: str = "", strict: bool = False,
               session: Tx | None = None) -> dict[str, Any]:
        """Search (search.html): a ``searchset`` Bundle with ``total``, matches (mode ``match``), their
        ``_include``/``_revinclude`` resources (mode ``include``) and paging links. Pages are consistent:
        the first page fixes a snapshot (the highest resource key then), later pages never show resources
        created after it, and the default order pages by key (``_after``) so deletions shift nothing;
        with ``_sort`` pages go by offset under the same snapshot."""
        defn = served_type(type_)
        req = parse_search(defn, params, strict=strict)
        with self._reading(session) as conn:
            if req.snapshot is None:
                req.snapshot = conn.scalar(select(func.max(FhirResource.pk))) or 0
            where = [FhirResource.res_type == type_, FhirResource.deleted.is_(False),
                     FhirResource.pk <= req.snapshot, *req.where()]
            total = conn.scalar(select(func.count()).select_from(FhirResource).where(*where)) or 0
            q = select(*_CURRENT).where(*where)
            if req.sort:
                q = q.order_by(*order_by(req)).offset(req.offset)
            else:
                if req.after is not None:
                    q = q.where(FhirResource.pk > req.after)
                q = q.order_by(FhirResource.pk)
            rows = list(conn.execute(q.limit(req.count + 1))) if req.count > 0 else []
            more = len(rows) > req.count
            rows = rows[: req.count]
            included = self._includes(conn, req, rows)
        return self._searchset(req, base, total, rows, included, more)

    def _includes(self, conn: Connection, req: SearchRequest, rows: list[Current]) -> list[Current]:
        if not rows or not (req.includes or req.revincludes):
            return []
        seen = {r.pk for r in rows}
        out: list[Current] = []
        pks = [r.pk for r in rows]
        ids = [r.res_id for r in rows]
        targets: set[tuple[str, str]] = set()
        for inc in req.includes:
            if inc.source != req.defn.type:
                continue
            q = select(FhirSearchIndex.system, FhirSearchIndex.value).where(
                FhirSearchIndex.resource_pk.in_(pks), FhirSearchIndex.param == inc.param)
            if inc.target:
                q = q.where(FhirSearchIndex.system == inc.target)
            targets.update((t, i) for t, i in conn.execute(q) if t and i)
        found: list[Current] = []
        by_type: dict[str, list[str]] = {}
        for t, i in targets:
            by_type.setdefault(t, []).append(i)
        for t, idlist in by_type.items():
            found.extend(conn.execute(select(*_CURRENT).where(
                FhirResource.res_type == t, FhirResource.res_id.in_(idlist), FhirResource.deleted.is_(False))))
        for inc in req.revincludes:
            if inc.target not in (None, req.defn.type):
                continue
            sub = select(FhirSearchIndex.resource_pk).where(
                FhirSearchIndex.res_type == inc.source, FhirSearchIndex.param == inc.param,
                FhirSearchIndex.system == req.defn.type, FhirSearchIndex.value.in_(ids))
            found.extend(conn.execute(select(*_CURRENT).where(FhirResource.pk.in_(sub),
                                                              FhirResource.deleted.is_(False))))
        for r in found:
            if r.pk not in seen:
                seen.add(r.pk)
                out.append(r)
        return out

    def _searchset(self, req: SearchRequest, base: str, total: int, rows: list[Current],
                   included: list[Current], more: bool) -> dict[str, Any]:
        url = f"{base}/{req.defn.type}"
        keep = [*req.applied, ("_count", str(req.count)), ("_snapshot", str(req.snapshot))]
        keep = [(k, v) for k, v in keep if k != "_count"] + [("_count", str(req.count))]

        def link(rel: str, extra: list[tuple[str, str]]) -> dict[str, str]:
            return {"relation": rel, "url": f"{url}?{urlencode(keep + extra)}"}

        here = [("_offset", str(req.offset))] if req.sort and req.offset else (
            [("_after", str(req.after))] if req.after is not None else [])
        links = [link("self", here), link("first", [])]
        if more and rows:
            links.append(link("next", [("_offset", str(req.offset + req.count))] if req.sort
                              else [("_after", str(rows[-1].pk))]))
        if req.sort and req.offset > 0:
            links.append(link("previous", [("_offset", str(max(0, req.offset - req.count)))]))
        entries: list[dict[str, Any]] = [
            {"fullUrl": f"{base}/{r.res_type}/{r.res_id}", "resource": json.loads(r.content or "{}"),
             "search": {"mode": "match"}} for r in rows
        ]
        entries += [{"fullUrl": f"{base}/{r.res_type}/{r.res_id}", "resource": json.loads(r.content or "{}"),
                     "search": {"mode": "include"}} for r in included]
        if req.ignored:
            entries.append({"resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "not-supported",
                           "diagnostics": f"search parameter '{k}' was ignored: {why}", "expression": [k]}
                          for k, why in req.ignored]}, "search": {"mode": "outcome"}})
        return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}

    # -- Bundles ------------------------------------------------------------------------------------------

    def transaction(self, bundle: dict[str, Any], *, session: Tx | None = None) -> dict[str, Any]:
        """Apply a transaction Bundle atomically (http.html §3.1.0.11.2): every entry or none.

        Entries run in the order the spec fixes (DELETE, POST, PUT, GET); conditional creates
        (``request.ifNoneExist``) and conditional updates (``PUT Type?query``) are resolved first, and every
        ``reference`` to an entry's ``fullUrl`` (``urn:uuid:…`` or the entry's URL) is rewritten to the
        ``Type/id`` it got. Any failure rolls the whole Bundle back and raises the error, its message naming
        the entry. With ``session`` the caller owns the transaction."""
        entries = _bundle_entries(bundle, "transaction")
        with self._writing(session) as conn:
            return self._transaction(conn, entries)

    def _transaction(self, s: Connection, entries: list[dict[str, Any]]) -> dict[str, Any]:
        order = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
        plan: list[tuple[int, dict[str, Any]]] = []
        for i, e in enumerate(entries):
            method = str((e.get("request") or {}).get("method", "")).upper()
            if method not in order:
                raise InvalidInput(f"entry {i}: request.method '{method}' is not supported",
                                   expression=f"Bundle.entry[{i}].request.method")
            plan.append((i, e))
        plan.sort(key=lambda p: order[str(p[1]["request"]["method"]).upper()])
        # Pass 1: the id every created/updated entry will have, so references can be rewritten. ``known``:
        # the row found (or None: certainly absent, a new id) is the current one unless written since.
        ids: dict[str, str] = {}
        resolved: dict[int, _Resolved] = {}
        for i, e in plan:
            req = e["request"]
            method = str(req["method"]).upper()
            res = e.get("resource")
            type_, id_, query = _split_url(str(req.get("url", "")), i)
            if method == "POST":
                if not isinstance(res, dict):
                    raise InvalidInput(f"entry {i}: POST needs a resource", expression=f"Bundle.entry[{i}].resource")
                type_ = type_ or str(res.get("resourceType"))
                served_type(type_)
                match = None
                if req.get("ifNoneExist"):
                    self._lock(s, f"{type_}?{req['ifNoneExist']}")
                    found = self.match(s, type_, str(req["ifNoneExist"]))
                    if len(found) > 1:
                        raise PreconditionFailed(f"entry {i}: ifNoneExist matches more than one {type_}")
                    match = found[0] if found else None
                new_id = match.res_id if match else str(uuid.uuid4())
                resolved[i] = _Resolved(type_, new_id, match, True)
            elif method == "PUT":
                served_type(type_)
                row, known = None, False
                if query is not None:
                    self._lock(s, f"{type_}?{query}")
                    found = self.match(s, type_, query)
                    if len(found) > 1:
                        raise PreconditionFailed(f"entry {i}: '{type_}?{query}' matches more than one resource")
                    body_id = res.get("id") if isinstance(res, dict) else None
                    if found:
                        id_, row, known = found[0].res_id, found[0], True
                    elif body_id:
                        id_ = body_id
                    else:
                        id_, known = str(uuid.uuid4()), True
                resolved[i] = _Resolved(type_, valid_id(id_ or ""), row, known)
            else:
                continue
            full = e.get("fullUrl")
            if isinstance(full, str) and full:
                ids[full] = f"{resolved[i].type}/{resolved[i].id}"
        # Pass 2: run the entries; their writes go out together (one statement per table) at the end.
        results: dict[int, dict[str, Any]] = {}
        batch = _Batch()
        touched: set[tuple[str, str]] = set()
        for i, e in plan:
            try:
                results[i] = self._run_entry(s, i, e, resolved.get(i), ids, batch, touched)
            except InteropError as exc:
                exc.message = f"Bundle.entry[{i}]: {exc.message}"
                exc.args = (exc.message,)
                if exc.expression is None:
                    exc.expression = f"Bundle.entry[{i}]"
                raise
        batch.flush(s)
        return {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [results[i] for i in range(len(entries))]}

    def _run_entry(self, s: Connection, i: int, e: dict[str, Any], resolved: _Resolved | None, ids: dict[str, str],
                   batch: _Batch, touched: set[tuple[str, str]]) -> dict[str, Any]:
        req = e["request"]
        method = str(req["method"]).upper()
        if method in ("DELETE", "GET", "HEAD"):
            batch.flush(s)  # these read what the entries before them wrote
        if method == "DELETE":
            type_, id_, query = _split_url(str(req.get("url", "")), i)
            if query is not None:
                found = self.match(s, type_, query)
                if len(found) > 1:
                    raise PreconditionFailed(f"'{type_}?{query}' matches more than one resource")
                id_ = found[0].res_id if found else None
            if id_:
                touched.add((type_, id_))
                self.delete(type_, id_, session=s)
            return {"response": {"status": "204 No Content"}}
        if method in ("GET", "HEAD"):
            type_, id_, query = _split_url(str(req.get("url", "")), i)
            if id_:
                got = self.read(type_, id_, session=s)
                return {"resource": got.resource, "response": _response(got)}
            params = parse_qsl(query or "", keep_blank_values=True)
            return {"resource": self.search(type_, params, session=s), "response": {"status": "200 OK"}}
        assert resolved is not None
        type_, id_, row = resolved.type, resolved.id, resolved.row
        key = (type_, id_)
        resource = _rewrite_refs(e["resource"], ids)
        if method == "POST":
            if row is not None:
                if key in touched:  # written by an earlier entry: as it is now
                    batch.flush(s)
                    row = self._row(s, type_, id_)
                    if row is None:
                        raise NotFound(f"{type_}/{id_} is not known")
                got = _stored(row, 200)
            else:
                validate_resource(resource, type_)
                got = self._write(s, None, type_, id_, resource, "POST", batch)
        else:
            if method == "PATCH":
                raise MethodNotAllowed("PATCH is not supported")
            body = {**resource, "id": id_}
            validate_resource(body, type_)
            valid_id(id_)
            if key in touched or not resolved.known or (row is not None and not self.db.is_sqlite):
                # Read (on PostgreSQL lock) the current row; pass 1's is reused only while nothing changed it.
                batch.flush(s)
                row = self._row(s, type_, id_, for_update=True)
            got = self._put(s, row, type_, id_, body, req.get("ifMatch"), batch)
        touched.add(key)
        return {"fullUrl": f"{type_}/{id_}", "resource": got.resource, "response": _response(got)}

    def batch(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Apply a batch Bundle (http.html §3.1.0.11.1): each entry on its own, in its own transaction;
        a failed entry's response carries its status and OperationOutcome, the others still apply."""
        entries = _bundle_entries(bundle, "batch")
        out: list[dict[str, Any]] = []
        for i, e in enumerate(entries):
            try:
                with self.db.write_tx() as conn:
                    resp = self._transaction(conn, [e])["entry"][0]
            except InteropError as exc:
                resp = {"response": {"status": f"{exc.http_status} {_REASONS.get(exc.http_status, 'Error')}",
                                     "outcome": exc.operation_outcome()}}
            out.append(resp)
            _ = i
        return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


@dataclass(frozen=True, slots=True)
class _Resolved:
    """Pass 1 of a transaction for a POST/PUT entry: its type and id, and the current row found by its
    condition (``known``: that row, or its absence, holds unless an earlier entry writes the resource)."""

    type: str
    id: str
    row: Current | None
    known: bool


_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            410: "Gone", 412: "Precondition Failed", 422: "Unprocessable Entity", 500: "Internal Server Error"}


def _response(got: Stored) -> dict[str, Any]:
    return {"status": "201 Created" if got.status == 201 else "200 OK", "location": got.location,
            "etag": got.etag, "lastModified": instant(got.last_updated)}


def _bundle_entries(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    if bundle.get("resourceType") != "Bundle":
        raise InvalidInput("expected a Bundle", expression="resourceType")
    if bundle.get("type") != kind:
        raise InvalidInput(f"expected a Bundle of type '{kind}', got '{bundle.get('type')}'", expression="Bundle.type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput("Bundle.entry must be a list of objects", expression="Bundle.entry")
    for i, e in enumerate(entries):
        if not isinstance(e.get("request"), dict):
            raise InvalidInput(f"entry {i} has no request", expression=f"Bundle.entry[{i}].request")
    return entries


def _split_url(url: str, i: int) -> tuple[str, str | None, str | None]:
    """``Type``, ``Type/id``, ``Type?query`` (relative to the base) → (type, id, query)."""
    path, sep, query = url.partition("?")
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise InvalidInput(f"entry {i}: request.url '{url}' names no resource type",
                           expression=f"Bundle.entry[{i}].request.url")
    type_ = parts[0]
    served_type(type_)
    return type_, (parts[1] if len(parts) > 1 else None), (query if sep else None)


def _rewrite_refs(node: Any, ids: dict[str, str]) -> Any:
    """A copy of ``node`` with every ``reference`` naming a Bundle entry's fullUrl pointing at its Type/id."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in ids:
                out[k] = ids[v]
            else:
                out[k] = _rewrite_refs(v, ids)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, ids) for v in node]
    return node


__all__ = ["FhirStore", "Stored", "etag", "instant", "parse_etag", "split_reference"]
