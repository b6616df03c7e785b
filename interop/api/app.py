"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from interop.api import errors, health, jobs, studies
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
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(jobs.router)
    app.include_router(dicomweb_router, prefix="/dicomweb")
    app.include_router(fhir_router, prefix="/fhir")
    return app
