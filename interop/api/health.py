"""Liveness and readiness (no token needed: load balancers and orchestrators call these)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from interop.api.deps import NodeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(node: NodeDep) -> JSONResponse:
    """Every dependency answers: 200 when all are ``ok``, 503 otherwise."""
    checks = node.check_ready()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
