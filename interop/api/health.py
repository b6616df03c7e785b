"""Liveness, readiness and metrics (no token needed: load balancers, orchestrators and Prometheus call these;
none of them carries patient data)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from interop import metrics
from interop.api.deps import NodeDep
from interop.node import READY

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(node: NodeDep) -> JSONResponse:
    """Every dependency answers: 200 when all are ``ok`` (the job broker: ``local`` for the local executor),
    503 otherwise, with each one's reason. Checks: database, storage (a write), storage_space (the free-space
    watermark), broker (a connection within 2 s), dicom and hl7 (listening)."""
    checks = await run_in_threadpool(node.check_ready)  # the broker's check may wait up to its timeout
    ok = all(v in READY for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text exposition: ingest, study readiness, HL7 ACKs, jobs, inference and FHIR latency."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
