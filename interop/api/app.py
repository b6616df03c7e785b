"""The FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from interop import metrics
from interop.api import errors, health, jobs, reports, studies
from interop.node import Node


def create_app(node: Node, *, manage_node: bool = True) -> FastAPI:
    """Build the app around ``node``; with ``manage_node`` the app's lifespan starts and stops it."""
    # Imported here: the DICOMweb routers use interop.api.deps, so a module-level import would be circular
    # whenever interop.dicomweb is imported before interop.api.
    from interop.dicomweb import router as dicomweb_router
    from interop.fhir.api import router as fhir_router

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_node:
            node.start()
        try:
            yield
        finally:
            if manage_node:
                node.stop()

    app = FastAPI(
        title="interop",
        summary="Imaging-AI node: DICOM, DICOMweb, FHIR R4 and HL7 v2 integration server",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.node = node
    errors.install(app)

    @app.middleware("http")
    async def fhir_latency(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """FHIR request latency by interaction (the route's path template, after routing)."""
        if not request.url.path.startswith("/fhir"):
            return await call_next(request)
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or request.url.path
        interaction = metrics.fhir_interaction(request.method, template)
        metrics.FHIR_SECONDS.labels(interaction, f"{response.status_code // 100}xx").observe(
            time.perf_counter() - started)
        return response

    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(jobs.router)
    app.include_router(reports.router)
    app.include_router(dicomweb_router, prefix="/dicomweb")
    app.include_router(fhir_router, prefix="/fhir")
    return app
