"""The FHIR R4 RESTful API at ``/fhir`` (http.html): one router, thin over :class:`FhirStore`.

Every interaction except ``/metadata`` needs a bearer token whose SMART scopes grant it on the resource
type (read r, vread r, history r, search s, create c, update u, delete d). A token whose only scopes for an
interaction are ``patient/`` ones is confined to its patient's compartment (:mod:`interop.auth.compartment`):
another patient's resource is 403, a search gets the patient parameter added (a type without one is 403),
included resources outside the compartment are dropped, and transaction/batch Bundles are refused. Errors
leave as OperationOutcome through the app's handlers (:mod:`interop.api.errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from interop.api.deps import NodeDep, PrincipalDep
from interop.auth import Principal, compartment_filter
from interop.auth.compartment import check_in_compartment, compartment_params, filter_bundle
from interop.auth.discovery import capability_security
from interop.errors import Forbidden, InvalidInput, MethodNotAllowed, NotFound, UnsupportedMediaType
from interop.fhir.capability import capability_statement
from interop.fhir.registry import ResourceDef
from interop.fhir.store import FhirStore, Stored, instant
from interop.fhir.validation import parse_json, served_type, valid_id

FHIR_JSON = "application/fhir+json"

router = APIRouter(tags=["FHIR R4"])


class FhirJSONResponse(JSONResponse):
    media_type = FHIR_JSON


async def _body(request: Request) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if body and ctype and ctype not in (FHIR_JSON, "application/json", "application/json+fhir", "text/json") \
            and ctype != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(f"content type '{ctype}' is not supported; send {FHIR_JSON}")
    return body


BodyDep = Annotated[bytes, Depends(_body)]


def base_url(request: Request, node: Any) -> str:
    public = node.settings.http.public_url
    root = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return f"{root}/fhir"


def _strict(request: Request) -> bool:
    """``Prefer: handling=strict`` (search.html §3.1.1.2); lenient is the default."""
    return "handling=strict" in request.headers.get("prefer", "").replace(" ", "")


def _prefer_return(request: Request) -> str:
    prefer = request.headers.get("prefer", "").replace(" ", "")
    for part in prefer.split(","):
        if part.startswith("return="):
            return part[len("return="):]
    return "representation"


def _allowed(defn: ResourceDef, interaction: str) -> None:
    if interaction not in defn.interactions:
        raise MethodNotAllowed(f"{interaction} is not supported for {defn.type} (it is "
                               f"{'read-only' if 'create' not in defn.interactions else 'restricted'} here)")


def _typed(principal: Principal, type_: str, permission: str, interaction: str) -> ResourceDef:
    defn = served_type(type_)
    principal.require(type_, permission)
    _allowed(defn, interaction)
    return defn


def _stored_response(request: Request, got: Stored, *, write: bool = False) -> Response:
    # RFC 9110 §5.6.7 HTTP-date is GMT; SQLite gives naive UTC, PostgreSQL the session's zone.
    when = got.last_updated.replace(tzinfo=dt.UTC) if got.last_updated.tzinfo is None else \
        got.last_updated.astimezone(dt.UTC)
    headers = {"ETag": got.etag, "Last-Modified": email.utils.format_datetime(when, usegmt=True)}
    if write:
        headers["Location"] = f"{str(request.base_url).rstrip('/')}/fhir/{got.location}"
        pref = _prefer_return(request)
        if pref == "minimal":
            return Response(status_code=got.status, headers=headers)
        if pref == "OperationOutcome":
            outcome = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational",
                 "diagnostics": f"{'created' if got.status == 201 else 'updated'} {got.location}"}]}
            return FhirJSONResponse(outcome, status_code=got.status, headers=headers)
    return FhirJSONResponse(got.resource, status_code=got.status, headers=headers)


def _store(node: Any) -> FhirStore:
    store: FhirStore = node.fhir
    return store


def _check_stored(node: Any, type_: str, id_: str, patient: str | None) -> None:
    """For a patient/ scope: the stored resource (if any) must be in the patient's compartment."""
    if patient is not None:
        with contextlib.suppress(NotFound):  # nothing stored (or deleted, Gone): nothing to protect
            check_in_compartment(_store(node).read(type_, valid_id(id_)).resource, patient)


# -- server-wide ----------------------------------------------------------------------------------------


@router.get("/metadata", summary="CapabilityStatement (public)")
def metadata(request: Request, node: NodeDep) -> Response:
    """capabilities interaction (http.html §3.1.0.14); no token needed."""
    from interop import __version__

    date = instant(dt.datetime.now(dt.UTC))
    base = base_url(request, node)
    smart = capability_security(base.removesuffix("/fhir")) if node.settings.auth.server.enabled else None
    return FhirJSONResponse(capability_statement(base, software_version=__version__, date=date, smart=smart,
                                                 cors=bool(node.settings.http.cors_origins)))


_PERMISSION = {"GET": ("r", "read"), "HEAD": ("r", "read"), "POST": ("c", "create"), "PUT": ("u", "update"),
               "PATCH": ("u", "update"), "DELETE": ("d", "delete")}


@router.post("", summary="transaction or batch Bundle")
@router.post("/", include_in_schema=False)
def bundle(request: Request, node: NodeDep, principal: PrincipalDep, body: BodyDep) -> Response:
    """transaction / batch (http.html §3.1.0.11): the scopes for every entry are checked before any runs."""
    data = parse_json(body)
    if data.get("resourceType") != "Bundle":
        raise InvalidInput(f"POST to the base takes a Bundle, not a {data.get('resourceType')}",
                           expression="resourceType")
    for i, e in enumerate(data.get("entry") or []):
        req = e.get("request") if isinstance(e, dict) else None
        if not isinstance(req, dict):
            raise InvalidInput(f"entry {i} has no request", expression=f"Bundle.entry[{i}].request")
        method = str(req.get("method", "")).upper()
        type_ = str(req.get("url", "")).split("?")[0].strip("/").split("/")[0]
        perm, interaction = _PERMISSION.get(method, ("r", "read"))
        if method == "GET" and "/" not in str(req.get("url", "")).split("?")[0].strip("/"):
            perm, interaction = "s", "search-type"
        _typed(principal, type_, perm, interaction)
        if compartment_filter(principal, type_, perm) is not None:
            raise Forbidden("transaction and batch Bundles are not available with patient/ scopes")
    store = _store(node)
    kind = data.get("type")
    if kind == "transaction":
        return FhirJSONResponse(store.transaction(data))
    if kind == "batch":
        return FhirJSONResponse(store.batch(data))
    raise InvalidInput(f"Bundle.type must be 'transaction' or 'batch', not '{kind}'", expression="Bundle.type")


# -- type level ---------------------------------------------------------------------------------------------


def _search(request: Request, node: Any, type_: str, params: list[tuple[str, str]], patient: str | None = None
            ) -> Response:
    if patient is not None:  # a patient/ scope: this patient's resources only
        params = params + compartment_params(type_, patient)
    got = _store(node).search(type_, params, base=base_url(request, node), strict=_strict(request))
    return FhirJSONResponse(filter_bundle(got, patient) if patient is not None else got)


@router.get("/{type_}", summary="search")
def search_get(type_: str, request: Request, node: NodeDep, principal: PrincipalDep) -> Response:
    """search-type over GET (search.html §3.1.1)."""
    _typed(principal, type_, "s", "search-type")
    return _search(request, node, type_, list(request.query_params.multi_items()),
                   compartment_filter(principal, type_, "s"))


@router.post("/{type_}/_search", summary="search (POST)")
def search_post(type_: str, request: Request, node: NodeDep, principal: PrincipalDep, body: BodyDep) -> Response:
    """search-type over POST with form-encoded parameters (search.html §3.1.1, http.html §3.1.0.9)."""
    _typed(principal, type_, "s", "search-type")
    params = list(request.query_params.multi_items()) + parse_qsl(body.decode("utf-8", "replace"),
                                                                   keep_blank_values=True)
    return _search(request, node, type_, params, compartment_filter(principal, type_, "s"))


@router.post("/{type_}", summary="create")
def create(type_: str, request: Request, node: NodeDep, principal: PrincipalDep, body: BodyDep) -> Response:
    """create (http.html §3.1.0.7); ``If-None-Exist`` makes it conditional (§3.1.0.8)."""
    _typed(principal, type_, "c", "create")
    data = parse_json(body)
    check_in_compartment(data, compartment_filter(principal, type_, "c"))
    got = _store(node).create(data, if_none_exist=request.headers.get("if-none-exist"), type_=type_)
    return _stored_response(request, got, write=True)


@router.put("/{type_}", summary="conditional update")
def conditional_update(type_: str, request: Request, node: NodeDep, principal: PrincipalDep, body: BodyDep
                       ) -> Response:
    """conditional update ``PUT Type?query`` (http.html §3.1.0.10.2)."""
    _typed(principal, type_, "u", "update")
    if not request.url.query:
        raise InvalidInput("PUT to a type needs search parameters (conditional update) or an id in the URL")
    data, query = parse_json(body), request.url.query
    patient = compartment_filter(principal, type_, "u")
    if patient is not None:  # the match and the new content both in the patient's compartment
        check_in_compartment(data, patient)
        query = f"{query}&{urlencode(compartment_params(type_, patient))}"
    got = _store(node).conditional_update(type_, query, data, if_match=request.headers.get("if-match"))
    return _stored_response(request, got, write=True)


# -- instance level ---------------------------------------------------------------------------------------


@router.get("/{type_}/{id_}", summary="read")
def read(type_: str, id_: str, request: Request, node: NodeDep, principal: PrincipalDep) -> Response:
    """read (http.html §3.1.0.2): 404 unknown, 410 deleted."""
    _typed(principal, type_, "r", "read")
    got = _store(node).read(type_, valid_id(id_))
    check_in_compartment(got.resource, compartment_filter(principal, type_, "r"))
    return _stored_response(request, got)


@router.put("/{type_}/{id_}", summary="update")
def update(type_: str, id_: str, request: Request, node: NodeDep, principal: PrincipalDep, body: BodyDep
           ) -> Response:
    """update (http.html §3.1.0.4) with ``If-Match`` version checks (§3.1.0.5); creates with the client's id
    when absent (updateCreate)."""
    _typed(principal, type_, "u", "update")
    data = parse_json(body)
    patient = compartment_filter(principal, type_, "u")
    if patient is not None:
        check_in_compartment(data, patient)
        _check_stored(node, type_, id_, patient)
    got = _store(node).update(type_, valid_id(id_), data, if_match=request.headers.get("if-match"))
    return _stored_response(request, got, write=True)


@router.delete("/{type_}/{id_}", summary="delete")
def delete(type_: str, id_: str, node: NodeDep, principal: PrincipalDep) -> Response:
    """delete (http.html §3.1.0.6): 204; 409 while another resource references it."""
    _typed(principal, type_, "d", "delete")
    _check_stored(node, type_, id_, compartment_filter(principal, type_, "d"))
    _store(node).delete(type_, valid_id(id_))
    return Response(status_code=204)


@router.get("/{type_}/{id_}/_history", summary="instance history")
def history(type_: str, id_: str, request: Request, node: NodeDep, principal: PrincipalDep) -> Response:
    """history-instance (http.html §3.1.0.12)."""
    _typed(principal, type_, "r", "history-instance")
    got = _store(node).history(type_, valid_id(id_), base=base_url(request, node))
    patient = compartment_filter(principal, type_, "r")
    if patient is not None:
        for entry in got.get("entry") or []:
            if isinstance(entry.get("resource"), dict):
                check_in_compartment(entry["resource"], patient)
    return FhirJSONResponse(got)


@router.get("/{type_}/{id_}/_history/{vid}", summary="vread")
def vread(type_: str, id_: str, vid: str, request: Request, node: NodeDep, principal: PrincipalDep) -> Response:
    """vread (http.html §3.1.0.3)."""
    _typed(principal, type_, "r", "vread")
    if not vid.isdigit():
        raise InvalidInput(f"version id '{vid}' is not a number", expression="versionId")
    got = _store(node).vread(type_, valid_id(id_), int(vid))
    check_in_compartment(got.resource, compartment_filter(principal, type_, "r"))
    return _stored_response(request, got)
