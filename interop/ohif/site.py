"""The installed OHIF viewer (npm ``@ohif/app``'s prebuilt ``dist/``) as files under a base path.

OHIF's prebuilt ``dist/`` is built for the root of a web server (``PUBLIC_URL=/``): ``index.html`` loads
``/app.bundle.<hash>.js``, webpack's runtime loads chunks, workers and codecs (``.wasm``) from ``/``, and the
style sheet names its font as ``url(/<hash>.woff2)``. OHIF's documented way to serve it under a path is to
build it again with another ``PUBLIC_URL``; we serve the unmodified files and move that root when sending
them: ``index.html``'s ``href``/``src``/``content`` paths and ``window.PUBLIC_URL``, webpack's public path
(``__webpack_require__.p = "/"``) in the bundles that carry a webpack runtime, and ``url(/`` in style sheets.
The files on disk are never edited; what changes is cached in memory (a few files, the main bundle ~17 MB).

A request for a path that is no file goes to ``index.html`` (OHIF's client routes: ``/viewer``,
``/callback``, ``/local`` …) unless it names a static asset by its extension, which is a plain 404: a missing
chunk must fail as itself, not as HTML parsed as JavaScript.

The files hold no patient data: the viewer fetches everything patient-related from ``/dicomweb`` with the
signed-in user's token.
"""

from __future__ import annotations

import mimetypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path

#: Media types by extension (``mimetypes`` on a bare system lacks ``.wasm``, ``.mjs``, ``.map`` …). WebAssembly
#: must be ``application/wasm`` for ``WebAssembly.instantiateStreaming``, modules must be JavaScript.
MEDIA_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".onnx": "application/octet-stream",
    ".gz": "application/gzip",
}
#: Extensions of static assets: a missing one is a 404, never the app's ``index.html``.
ASSET_EXTENSIONS = frozenset(MEDIA_TYPES) - {".html"} | {".jpg", ".jpeg", ".gif", ".webp", ".eot", ".data"}
#: A content hash in the file name (``app.bundle.0f6159c501addfe9.js``, ``0ddf166f7a343eda.wasm``): such a file
#: never changes under its name and may be cached for good.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16,}\.[a-z0-9]+$")

_WEBPACK_PUBLIC_PATH = b'__webpack_require__.p = "/";'
_HTML_ROOT_PATH = re.compile(rb'(\s(?:href|src|content)=")/(?!/)')
_HTML_PUBLIC_URL = re.compile(rb'window\.PUBLIC_URL="/"')
_CSS_ROOT_URL = re.compile(rb"url\(/(?!/)")


def media_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in MEDIA_TYPES:
        return MEDIA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def is_immutable(path: Path) -> bool:
    """Whether ``path``'s name carries a content hash (cache it for a year)."""
    return bool(_HASHED.search(path.name))


def relocate(name: str, data: bytes, base: str) -> bytes:
    """``data`` of the dist file ``name`` with its root-relative URLs moved under ``base`` (``/ohif/``).

    Unchanged bytes are returned as the same object, so callers can tell (``result is data``)."""
    if base == "/":
        return data
    prefix = base.encode()
    suffix = Path(name).suffix.lower()
    if suffix == ".html":
        out = _HTML_ROOT_PATH.sub(rb"\g<1>" + prefix, data)
        out = _HTML_PUBLIC_URL.sub(b'window.PUBLIC_URL="' + prefix + b'"', out)
    elif suffix == ".json" and name == "manifest.json":
        out = data.replace(b'"/assets/', b'"' + prefix + b"assets/")
    elif suffix in (".js", ".mjs"):
        out = data.replace(_WEBPACK_PUBLIC_PATH, b'__webpack_require__.p = "' + prefix + b'";')
    elif suffix == ".css":
        out = _CSS_ROOT_URL.sub(b"url(" + prefix, data)
    else:
        return data
    return data if out == data else out


#: Files whose text may name the root (the rest are sent from disk as they are).
_RELOCATABLE = frozenset({".html", ".js", ".mjs", ".css", ".json"})


@dataclass(frozen=True)
class Asset:
    """A file to send: from disk (``path``) or, when relocated, the moved bytes (``body``)."""

    path: Path
    media_type: str
    body: bytes | None = None
    immutable: bool = False


class OhifSite:
    """The viewer's files under ``root`` (the unpacked ``dist/``), served under the URL path ``base``."""

    def __init__(self, root: Path, base: str) -> None:
        if not base.startswith("/") or not base.endswith("/"):
            raise ValueError(f"base path must start and end with '/': {base!r}")
        self.root = root.resolve()
        self.base = base
        self._lock = threading.Lock()
        #: relative path -> ((mtime_ns, size), relocated bytes or None when the file needs no change)
        self._moved: dict[str, tuple[tuple[int, int], bytes | None]] = {}

    @property
    def installed(self) -> bool:
        return (self.root / "index.html").is_file()

    def file(self, rel: str) -> Path | None:
        """The file at ``rel`` inside the root; ``None`` when there is none (or ``rel`` leaves the root)."""
        if not rel or "\\" in rel or "\x00" in rel:
            return None
        candidate = (self.root / rel).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def asset(self, rel: str) -> Asset | None:
        """What to send for the URL path ``base + rel``: the file, ``index.html`` for a client route, or
        ``None`` (404) for a missing static asset."""
        rel = rel.lstrip("/")
        path = self.file(rel)
        if path is None:
            if Path(rel).suffix.lower() in ASSET_EXTENSIONS:
                return None
            path = self.root / "index.html"
            if not path.is_file():
                return None
        return Asset(path, media_type(path), self._relocated(path), immutable=is_immutable(path))

    def _relocated(self, path: Path) -> bytes | None:
        if path.suffix.lower() not in _RELOCATABLE:
            return None
        key = str(path.relative_to(self.root))
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._moved.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        data = path.read_bytes()
        moved = relocate(path.name, data, self.base)
        body = None if moved is data else moved
        with self._lock:
            self._moved[key] = (stamp, body)
        return body
