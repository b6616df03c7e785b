"""Liveness, readiness and metrics (no token needed: load balancers, orchestrators and Prometheus call these;
none of them carries patient data)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from interop import metrics
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


@router.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text exposition: ingest, study readiness, HL7 ACKs, jobs, inference and FHIR latency."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
