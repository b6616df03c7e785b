"""Dependencies shared by the HTTP routers (FastAPI ``Annotated`` aliases)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from interop.auth import Principal
from interop.errors import Unauthorized
from interop.node import Node

# The dependencies below are ``async def`` on purpose: they do no I/O (token checks are ~20 µs of CPU), and a
# plain ``def`` dependency costs a hop to the thread pool and back on every request.


async def get_node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


NodeDep = Annotated[Node, Depends(get_node)]


async def get_principal(request: Request, node: NodeDep) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` (RFC 6750); 401 without a valid one."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    principal = node.tokens.verify(token.strip())
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(resource: str, permission: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that demands a SMART scope granting ``permission`` (c r u d s) on ``resource``."""

    async def check(principal: PrincipalDep) -> Principal:
        principal.require(resource, permission)
        return principal

    return check


#: DICOMweb is the ImagingStudy compartment of the SMART scopes.
CanReadImaging = Annotated[Principal, Depends(require("ImagingStudy", "r"))]
CanSearchImaging = Annotated[Principal, Depends(require("ImagingStudy", "s"))]
CanStoreImaging = Annotated[Principal, Depends(require("ImagingStudy", "c"))]
