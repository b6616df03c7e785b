"""Exception handlers: every error leaves as an OperationOutcome with the error's own HTTP status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from interop.errors import InteropError, InvalidInput, NotFound, Unauthorized

log = logging.getLogger(__name__)

_FHIR_JSON = "application/fhir+json"


def _outcome(err: InteropError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="interop"'} if err.http_status == 401 else {}
    if err.retry_after_seconds is not None:
        headers["Retry-After"] = str(err.retry_after_seconds)
    return JSONResponse(err.operation_outcome(), status_code=err.http_status, media_type=_FHIR_JSON,
                        headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(InteropError)
    async def _interop(_: Request, exc: InteropError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc.message)
        return _outcome(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _outcome(InvalidInput(f"{where}: {first.get('msg', 'invalid request')}", expression=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err: InteropError
        if exc.status_code == 404:
            err = NotFound(str(exc.detail))
        elif exc.status_code == 401:
            err = Unauthorized(str(exc.detail))
        else:
            err = InteropError(str(exc.detail))
            err.http_status = exc.status_code  # type: ignore[misc]
        return _outcome(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _outcome(InteropError("internal error"))
