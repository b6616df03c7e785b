"""The FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interop import logs, metrics, ui
from interop.api import errors, health, jobs, models, oauth, reports, studies
from interop.api import viewer as viewer_api
from interop.node import Node


class FhirLatency:
    """FHIR request latency by interaction (the route's path template, after routing) and status class.

    A plain ASGI middleware: ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``) runs every
    request through a task group and memory streams, which cost more than a FHIR create's own SQL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/fhir"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = getattr(scope.get("route"), "path", None) or scope["path"]
            interaction = metrics.fhir_interaction(scope["method"], template)
            metrics.FHIR_SECONDS.labels(interaction, f"{status // 100}xx").observe(time.perf_counter() - started)


class Correlation:
    """Every request runs under a correlation id (interop.logs): the caller's ``X-Correlation-ID`` or
    ``X-Request-ID`` when it is a plain token, else a fresh ``r-`` id. The response names it in
    ``X-Request-ID``, and in ``X-Correlation-ID`` unless the endpoint set that header to the id of the study
    or job the response is about (STOW-RS, the jobs API)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = (logs.accept(headers.get(b"x-correlation-id", b"").decode("latin-1"))
               or logs.accept(headers.get(b"x-request-id", b"").decode("latin-1")) or logs.new_request_id())

        async def send_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = list(message.get("headers") or [])
                names = {k.lower() for k, _ in out}
                out.append((b"x-request-id", rid.encode()))
                if b"x-correlation-id" not in names:
                    out.append((b"x-correlation-id", rid.encode()))
                message["headers"] = out
            await send(message)

        with logs.correlated(rid):
            await self.app(scope, receive, send_ids)


def create_app(node: Node, *, manage_node: bool = True) -> FastAPI:
    """Build the app around ``node``; with ``manage_node`` the app's lifespan starts and stops it."""
    # Imported here: the DICOMweb routers use interop.api.deps, so a module-level import would be circular
    # whenever interop.dicomweb is imported before interop.api.
    from interop.dicomweb import router as dicomweb_router
    from interop.fhir.api import router as fhir_router
    from interop.ohif import router as ohif_router

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

    app.add_middleware(FhirLatency)
    if node.settings.audit.enabled:
        from interop.audit import AuditMiddleware

        app.add_middleware(AuditMiddleware, trail=node.audit)
    if node.settings.http.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Bearer tokens, not cookies, cross origins: no credentials mode.
        app.add_middleware(CORSMiddleware, allow_origins=node.settings.http.cors_origins,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Accept", "If-Match", "If-None-Exist",
                                          "Prefer", "X-Correlation-ID", "X-Request-ID"],
                           expose_headers=["Location", "ETag", "Content-Location", "Last-Modified",
                                           "X-Correlation-ID", "X-Request-ID"], max_age=600)
    app.add_middleware(Correlation)  # outermost: the audit trail's and every handler's lines carry the id
    # FHIR first: the router tries routes in order, and /fhir (its paths share no prefix with the others) is
    # the busiest API; after the ~50 DICOMweb and /api routes each FHIR request paid for matching them all.
    app.include_router(oauth.smart_router)  # /fhir/.well-known/smart-configuration, before /fhir/{type}/{id}
    app.include_router(fhir_router, prefix="/fhir")
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(jobs.router)
    app.include_router(models.router)  # model versions, shadow runs, drift
    app.include_router(reports.router)
    app.include_router(viewer_api.router)  # the worklist's counts, images and overlays
    app.include_router(dicomweb_router, prefix="/dicomweb")
    app.include_router(ohif_router)  # the OHIF viewer at /ohif/ (interop.ohif)
    app.include_router(ui.router)  # the web worklist: /, /launch.html, /ui/*
    oauth.install(app)  # /auth/* (SMART authorization server), OpenID discovery, RFC 6750 challenges
    return app
