"""``/ohif/``: the OHIF viewer, same-origin with ``/dicomweb`` (HTTP shell around :mod:`interop.ohif.site`).

* ``/ohif/app-config.js``: generated for this node (:mod:`interop.ohif.appconfig`);
* ``/ohif/<file>``: the installed ``dist/`` file (root paths moved under ``/ohif/``), with its media type;
  content-hashed names are cached for a year, the rest revalidated (ETag / Last-Modified);
* any other path under ``/ohif/`` (OHIF's client routes: ``/ohif/viewer?StudyInstanceUIDs=…``,
  ``/ohif/callback`` …): ``index.html``.

No token is needed for these: they are the viewer's code and carry no patient data. Everything the viewer
shows comes from ``/dicomweb`` under the signed-in user's bearer token and SMART scopes. When the viewer isn't
installed the pages say how to install it (``python -m interop.ohif.fetch``).
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from interop.api.deps import NodeDep
from interop.config import Settings
from interop.ohif.appconfig import ViewerConfig, app_config_js
from interop.ohif.site import OhifSite

router = APIRouter(tags=["OHIF viewer"])

MOUNT = "/ohif"
_NO_CACHE = "no-cache"
_IMMUTABLE = "public, max-age=31536000, immutable"


def dist_dir(settings: Settings) -> Path:
    """Where the viewer's files are: ``ohif.dist_dir``, else ``<data_dir>/ohif/dist``."""
    return settings.ohif.dist_dir or settings.data_dir / "ohif" / "dist"


def base_path(settings: Settings) -> str:
    """The URL path the browser sees the viewer under: ``http.public_url``'s path + ``/ohif/``."""
    prefix = urlsplit(settings.http.public_url).path.rstrip("/") if settings.http.public_url else ""
    return f"{prefix}{MOUNT}/"


def viewer_config(settings: Settings) -> ViewerConfig:
    """The viewer's settings: sign-in at ``ohif.authority`` if set, else at this node's authorization server (at
    its configured issuer, else at the origin the viewer is loaded from)."""
    builtin = settings.ohif.authority is None
    return ViewerConfig(router_basename=base_path(settings).rstrip("/"), public_url=settings.http.public_url,
                        client_id=settings.ohif.client_id, scope=settings.ohif.scope,
                        authority=settings.auth.server.issuer if builtin else settings.ohif.authority,
                        builtin_server=builtin)


@lru_cache(maxsize=4)
def _site(root: Path, base: str) -> OhifSite:
    return OhifSite(root, base)


def site(settings: Settings) -> OhifSite:
    return _site(dist_dir(settings), base_path(settings))


def _no_sign_in() -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><title>OHIF has no sign-in</title><h1>The OHIF viewer has no way to sign in</h1>"
        "<p>This node's authorization server is off (<code>auth.server.enabled = false</code>) and no "
        "<code>ohif.authority</code> (an OpenID Connect provider whose tokens this node accepts) is set.</p>",
        status_code=503)


def _not_installed(where: Path) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><title>OHIF is not installed</title><h1>The OHIF viewer is not installed on this node</h1>"
        f"<p>Install it (at setup time, needs npm) with <code>python -m interop.ohif.fetch</code>, which unpacks "
        f"<code>@ohif/app</code>'s prebuilt viewer into <code>{where}</code>, or set <code>ohif.dist_dir</code>.</p>",
        status_code=404)


@router.get(MOUNT, include_in_schema=False)
def ohif_root(request: Request) -> RedirectResponse:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{request.scope.get('root_path', '')}{MOUNT}/{query}", status_code=307)


@router.get(f"{MOUNT}/app-config.js", summary="OHIF configuration for this node")
def ohif_app_config(node: NodeDep) -> Response:
    """OHIF's ``window.config``: this node's DICOMweb as the data source, sign-in by OpenID Connect."""
    return Response(app_config_js(viewer_config(node.settings)), media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": _NO_CACHE, "X-Content-Type-Options": "nosniff"})


@router.api_route(f"{MOUNT}/{{path:path}}", methods=["GET", "HEAD"], include_in_schema=False)
def ohif_file(path: str, request: Request, node: NodeDep) -> Response:
    """A file of the viewer, or its ``index.html`` for a client route."""
    s = site(node.settings)
    if not s.installed:
        return _not_installed(s.root)
    if node.settings.ohif.authority is None and not node.settings.auth.server.enabled:
        return _no_sign_in()
    asset = s.asset(path)
    if asset is None:
        return Response(f"not found: {MOUNT}/{path}", status_code=404, media_type="text/plain")
    headers = {"Cache-Control": _IMMUTABLE if asset.immutable else _NO_CACHE, "X-Content-Type-Options": "nosniff"}
    if asset.body is not None:  # moved under the base: its own validator (the file's, and the base it was moved to)
        st = asset.path.stat()
        headers["ETag"] = f'W/"{st.st_mtime_ns:x}-{st.st_size:x}-{zlib.crc32(s.base.encode()):x}"'
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)
    return FileResponse(asset.path, media_type=asset.media_type, headers=headers)
