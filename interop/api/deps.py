"""Dependencies shared by the HTTP routers (FastAPI ``Annotated`` aliases)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from interop.auth import SIGNING_ROLES, Principal, TokenService
from interop.auth.compartment import compartment_filter, patient_identifier_values
from interop.auth.roles import check_roles
from interop.auth.server import AuthorizationServer
from interop.auth.tokens import InsufficientScope
from interop.errors import Forbidden, NotFound, Unauthorized
from interop.node import Node
from interop.store.models import Study

# The dependencies below are ``async def`` on purpose: they do no I/O (token checks are ~20 µs of CPU), and a
# plain ``def`` dependency costs a hop to the thread pool and back on every request.


async def get_node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


NodeDep = Annotated[Node, Depends(get_node)]


def base_url_of(request: Request, node: Node) -> str:
    """This node's base URL as the caller sees it: ``http.public_url``, else the one the request came to."""
    public = node.settings.http.public_url
    return public.rstrip("/") if public else str(request.base_url).rstrip("/")


#: Tokens that verified, by their text: (the token service that verified it, the base URL it was checked for,
#: the caller, its ``exp``). With the same service and base URL a token's signature, issuer and audience check
#: out the same way every time, so only the expiry needs checking again; the full verification (base64, JSON,
#: HMAC, claims: ~0.1 ms) was a tenth of a FHIR create. Bounded: emptied when full.
_VERIFIED: dict[str, tuple[TokenService, str, Principal, float]] = {}
_VERIFIED_MAX = 4096


def _verify(node: Node, token: str, base_url: str) -> Principal:
    hit = _VERIFIED.get(token)
    if hit is not None and hit[0] is node.tokens and hit[1] == base_url and time.time() < hit[3]:
        return hit[2]
    principal = node.tokens.verify(token, base_url=base_url)
    exp = principal.claims.get("exp")
    if isinstance(exp, int | float):
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[token] = (node.tokens, base_url, principal, float(exp))
    return principal


async def get_principal(request: Request, node: NodeDep) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` (RFC 6750 §2.1); 401 without a valid one
    (with ``WWW-Authenticate: Bearer error="invalid_token"`` for a token that does not verify, §3.1)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    base = base_url_of(request, node)
    if node.tokens.may_fetch(token):  # an external provider's keys are fetched off the event loop
        principal = await run_in_threadpool(_verify, node, token, base)
    else:
        principal = _verify(node, token, base)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(resource: str, permission: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that demands a SMART scope granting ``permission`` (c r u d s) on ``resource``."""

    async def check(principal: PrincipalDep) -> Principal:
        principal.require(resource, permission)
        return principal

    return check


def require_role(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that demands a person whose role is one of ``roles`` (exactly those: ``admin`` is not
    implied). The role is the token's ``role`` claim: set by the built-in authorization server from the user,
    by an external provider's ``role_claim``/``default_role``, or by ``interop token --role``. A token without
    a role (a backend client, ``interop token`` without ``--role``) is refused with 403: what needs a role is a
    person's act. Combine it with :func:`require` for the scope the interaction needs."""
    check_roles(roles)
    wanted = frozenset(roles)

    async def check(principal: PrincipalDep) -> Principal:
        if principal.role is None:
            raise Forbidden(f"only a person may do this (role {' or '.join(roles)}); this token names no role")
        if principal.role not in wanted:
            raise Forbidden(f"role {principal.role!r} may not do this (needs {' or '.join(roles)})")
        return principal

    return check


def require_admin() -> Callable[[Principal], Awaitable[Principal]]:
    """Configuration (routing rules, model versions, write-back retries): update on ``*`` granted by a
    ``user/`` or ``system/`` scope. A ``patient/*.u`` scope is for one patient's data and is refused (403)."""

    async def check(principal: PrincipalDep) -> Principal:
        principal.require("*", "u")
        try:
            confined = compartment_filter(principal, "*", "u") is not None
        except InsufficientScope:  # patient/ scopes without a patient in context
            confined = True
        if confined:
            raise InsufficientScope("configuring the node needs user/*.u or system/*.u; patient/ scopes reach one "
                                    "patient's data only")
        return principal

    return check


#: Configuration of the node (see :func:`require_admin`).
CanAdminister = Annotated[Principal, Depends(require_admin())]

#: A physician's sign-off: a radiologist or a physician (a system token, a technologist, a viewer or an admin
#: is refused).
CanSign = Annotated[Principal, Depends(require_role(*SIGNING_ROLES))]


async def get_auth_server(request: Request, node: NodeDep) -> AuthorizationServer:
    """The built-in authorization server of this app (made on first use; 404 when ``auth.server.enabled`` is
    off)."""
    if not node.settings.auth.server.enabled:
        raise NotFound("the built-in authorization server is disabled (auth.server.enabled)")
    server: AuthorizationServer | None = getattr(request.app.state, "auth_server", None)
    if server is None or server.db is not node.db:
        server = AuthorizationServer(node.db, node.tokens, node.settings.auth.server,
                                     token_ttl=node.settings.auth.token_ttl_seconds)
        request.app.state.auth_server = server
    return server


AuthServerDep = Annotated[AuthorizationServer, Depends(get_auth_server)]


#: DICOMweb is the ImagingStudy compartment of the SMART scopes.
CanReadImaging = Annotated[Principal, Depends(require("ImagingStudy", "r"))]
CanSearchImaging = Annotated[Principal, Depends(require("ImagingStudy", "s"))]
CanStoreImaging = Annotated[Principal, Depends(require("ImagingStudy", "c"))]


def imaging_compartment(node: Node, who: Principal, permission: str = "r") -> frozenset[str] | None:
    """The DICOM Patient IDs a ``patient/``-scoped token reaches (the identifier values of the patient in
    context; DICOMweb is the ImagingStudy compartment), or None when the token is not confined to a patient."""
    return patient_identifier_values(node.fhir, who, "ImagingStudy", permission)


def check_study_patient(node: Node, who: Principal, study: str) -> None:
    """:class:`Forbidden` (403) when ``who`` is confined to a patient and ``study`` is another patient's."""
    allowed = imaging_compartment(node, who)
    if allowed is None:
        return
    with node.db.reading() as s:
        patient_id = s.scalar(select(Study.patient_id).where(Study.study_uid == study))
    if patient_id is None or patient_id not in allowed:
        raise Forbidden(f"study {study} is not of the patient in context (the token's patient/ scopes reach "
                        "that patient's studies only)")
