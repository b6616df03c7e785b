"""Serves the worklist's static files: ``/`` (the page, also the SMART redirect URI), ``/launch.html`` (the
EHR launch URL) and ``/ui/<file>``. No token: the files carry no patient data; every call the page makes for
data carries the user's token.

Caching: the pages name their files under ``/ui/<build>/``, where ``<build>`` is a hash of every static file,
and those answers may be kept for a year (``immutable``): a reload costs no request for them, and a release
changes the hash. Module imports are relative, so they inherit the prefix. The pages themselves are
``no-cache`` with the build as their ETag. A path without the current build (an old page) is served fresh
with ``no-cache``.

Headers keep the page to its own scripts (Content-Security-Policy), keep the authorization code out of
Referer headers, and stop MIME sniffing. ``connect-src`` stays open: in an EHR launch the page talks to the
EHR's authorization and FHIR servers, which are only known at launch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request, Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PAGES = ("index.html", "launch.html")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src *; object-src 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
IMMUTABLE = "public, max-age=31536000, immutable"


def build_id(root: Path = STATIC) -> str:
    """A short hash of every file under ``root`` (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


BUILD = build_id()
_pages = {name: (STATIC / name).read_text(encoding="utf-8").replace('"/ui/', f'"/ui/{BUILD}/') for name in PAGES}
_files = StaticFiles(directory=STATIC)

router = APIRouter(include_in_schema=False)


def _page(name: str, request: Request) -> Response:
    etag = f'"{BUILD}"'
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(_pages[name], media_type="text/html; charset=utf-8", headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def worklist(request: Request) -> Response:
    """The worklist page (and the SMART redirect URI)."""
    return _page("index.html", request)


@router.api_route("/launch.html", methods=["GET", "HEAD"])
async def ehr_launch(request: Request) -> Response:
    """SMART EHR launch: ``/launch.html?iss=<EHR FHIR base>&launch=<id>``."""
    return _page("launch.html", request)


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def static_file(path: str, request: Request) -> Response:
    current = path.startswith(f"{BUILD}/")
    response = await _files.get_response(path.removeprefix(f"{BUILD}/"), request.scope)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = IMMUTABLE if current else "no-cache"
    return response
