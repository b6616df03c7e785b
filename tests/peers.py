"""Real peers for tests, started on free ports in a temporary folder and stopped at teardown:

* :class:`OrthancPeer`: Orthanc 1.10 (``/usr/sbin/Orthanc``) with this repository's ``orthanc/`` configuration
  (``orthanc/make_config.render``): DICOM and HTTP port, AE title, the DICOMweb plugin, our node as modality
  ``interop``, optionally the auto-routing script. ``stop()`` then ``start()`` brings the same storage back
  (a PACS down for a while). Starts in ~0.15 s here; a clean stop takes ~3.3 s.
* :class:`TestTokenServer`: a SMART Backend Services token endpoint (``client_credentials`` with a
  ``private_key_jwt`` assertion) that checks the assertion against a client's public JWKS and answers with a
  token our node accepts (HS256 with the node's ``secret.key``, ``interop.auth.tokens.TokenService``).
* :class:`HttpRecorder`: an HTTP endpoint that records every request and answers with set statuses (webhooks).
* :class:`StoreScp`: a pynetdicom C-STORE SCP that records what it receives (where auto-routing sends).

Fixtures ``orthanc_factory``, ``orthanc``, ``http_recorder``: import ``orthanc_factory_fixture``,
``orthanc_fixture``, ``http_recorder_fixture`` into a test module or conftest (pytest registers them under
their short names, and the import does not shadow the test's parameter).
A missing peer binary skips the test with the reason (``require_orthanc``); nothing passes silently.
The Orthanc part works without pytest too (``orthanc/selftest.py`` uses it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import httpx

REPO = Path(__file__).resolve().parents[1]
ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _free_port() -> int:
    try:
        from tests.support import free_port
    except ImportError:  # outside the test tree's import path (a script); same idea, fewer guarantees
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    return free_port()


# -- Orthanc ----------------------------------------------------------------------------------------------------


def orthanc_binary() -> str | None:
    """Orthanc's executable (Debian: /usr/sbin/Orthanc, often not on a user's PATH), or None."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in ORTHANC_BINARIES if os.access(p, os.X_OK)), None)


def require_orthanc() -> str:
    """The Orthanc binary, or skip the test saying what is missing."""
    import pytest

    exe = orthanc_binary()
    if exe is None:
        pytest.skip("Orthanc is not installed (tests/run.sh: apt-get install orthanc orthanc-dicomweb)")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)")
    return exe


def make_config_module() -> ModuleType:
    """``orthanc/make_config.py`` (not a package) as a module: ``render(**overrides) -> dict``."""
    spec = importlib.util.spec_from_file_location("orthanc_make_config", REPO / "orthanc" / "make_config.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class OrthancPeer:
    """Orthanc in a child process with its configuration, storage and log under ``root``."""

    root: Path
    aet: str = "ORTHANC"
    http_port: int = field(default_factory=_free_port)
    dicom_port: int = field(default_factory=_free_port)
    #: Seconds without a new instance before a study is stable (the auto-routing trigger).
    stable_age: int = 2
    #: Load ``orthanc/autoroute.lua`` (off by default: most tests use Orthanc as a plain PACS).
    autoroute: bool = False
    #: Where modality ``interop`` (our node) listens; default: a free port nothing listens on.
    node_port: int = field(default_factory=_free_port)
    node_aet: str = "INTEROP"
    #: HTTP basic-auth users (``{"name": "password"}``); none: the REST API is open to loopback clients.
    users: dict[str, str] | None = None
    #: Top-level configuration keys to replace after ``render`` (e.g. ``{"InteropAutoRoute": {...}}``).
    overrides: dict[str, Any] = field(default_factory=dict)
    binary: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = make_config_module().render(
            http_port=self.http_port, dicom_port=self.dicom_port, storage=self.root / "storage",
            stable_age=self.stable_age, aet=self.aet, interop_host="127.0.0.1", interop_port=self.node_port,
            interop_aet=self.node_aet, users=self.users, autoroute=self.autoroute,
        )
        cfg.update(self.overrides)
        return cfg

    def start(self, timeout: float = 30) -> OrthancPeer:
        """Start (or start again, on the same storage and ports) and wait until DICOM and HTTP answer."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        exe = self.binary or orthanc_binary()
        if exe is None:
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        # Orthanc expands ${VAR} in the configuration: keep the host's INTEROP_*/ORTHANC_* out of it.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INTEROP_", "ORTHANC_"))}
        env["TCP_NODELAY"] = "1"  # dcmtk's Nagle default (DESIGN.md, "Measuring on these machines")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, str(self.config_path)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"Orthanc exited ({code}):\n{self.log()}")
            with contextlib.suppress(OSError, httpx.HTTPError):
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                    pass
                if self.client().get("/system", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"Orthanc did not answer on {self.http_port}/{self.dicom_port} in {timeout} s:\n"
                           f"{self.log()}")

    def stop(self, timeout: float = 30, *, graceful: bool = True) -> None:
        """SIGTERM and wait for the process to end (Orthanc 1.10 takes ~3.3 s here, idle or not), so its ports
        and storage can be used again; ``graceful=False``: SIGKILL, for a peer that is thrown away."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    # -- REST ------------------------------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        auth = None
        if self.users:
            name, password = next(iter(self.users.items()))
            auth = httpx.BasicAuth(name, password)
        return httpx.Client(base_url=self.url, auth=auth, timeout=30)

    def rest(self, method: str, path: str, **kw: Any) -> Any:
        with self.client() as c:
            r = c.request(method, path, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def instances(self) -> list[str]:
        """Orthanc's ids of every stored instance."""
        return list(self.rest("GET", "/instances"))

    def find_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The stored instance with this SOP Instance UID (Orthanc's expanded instance resource), or None."""
        found = self.rest("POST", "/tools/find", json={"Level": "Instance", "Expand": True,
                                                       "Query": {"SOPInstanceUID": sop_instance_uid}})
        if len(found) > 1:
            raise AssertionError(f"{len(found)} instances with SOP Instance UID {sop_instance_uid}")
        return found[0] if found else None

    def metadata(self, instance_id: str) -> dict[str, Any]:
        return dict(self.rest("GET", f"/instances/{instance_id}/metadata?expand"))

    def jobs(self, type_: str = "DicomModalityStore") -> list[dict[str, Any]]:
        return [j for j in self.rest("GET", "/jobs?expand") if j.get("Type") == type_]

    def lua_log(self) -> list[str]:
        """The auto-routing script's lines (``interop autoroute: …``) in Orthanc's log."""
        return [ln.split("Lua says: ")[-1] for ln in self.log(10**7).splitlines() if "interop autoroute:" in ln]


# -- a DICOM listener -------------------------------------------------------------------------------------------


@dataclass
class Received:
    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


class StoreScp:
    """A pynetdicom Storage SCP on a free port that records each C-STORE and answers ``status`` (success by
    default; a failure status with ``error_comment`` to see how a sender takes a refusal). With
    ``allowed_calling_aes`` it rejects other calling AE titles (A-ASSOCIATE-RJ, PS3.8 §7.1.1.9)."""

    def __init__(self, ae_title: str = "INTEROP", port: int | None = None, *, status: int = 0x0000,
                 error_comment: str | None = None, allowed_calling_aes: list[str] | None = None) -> None:
        self.ae_title = ae_title
        self.port = port or _free_port()
        self.status = status
        self.error_comment = error_comment
        self.allowed_calling_aes = allowed_calling_aes
        self.received: list[Received] = []
        self._server: Any = None

    def start(self) -> StoreScp:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        if self.allowed_calling_aes:
            ae.require_calling_aet = list(self.allowed_calling_aes)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification

        def on_store(event: Any) -> Any:
            self.received.append(Received(event.assoc.requestor.ae_title, str(event.request.AffectedSOPClassUID),
                                          str(event.request.AffectedSOPInstanceUID),
                                          str(event.context.transfer_syntax)))
            if self.error_comment is None:
                return self.status
            from pydicom import Dataset

            answer = Dataset()
            answer.Status = self.status
            answer.ErrorComment = self.error_comment
            return answer

        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def sop_instance_uids(self) -> list[str]:
        return [r.sop_instance_uid for r in self.received]


# -- HTTP endpoints ---------------------------------------------------------------------------------------------


class _Threaded:
    """An ``http.server`` on 127.0.0.1 (free port) in a daemon thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> Any:
        owner = self

        class Handler(self.handler):  # type: ignore[name-defined,misc]
            server_owner = owner

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=type(self).__name__,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any] | None,
           headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    handler.send_response(status)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    if body is not None:
        handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _RecorderHandler(BaseHTTPRequestHandler):
    server_owner: HttpRecorder

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        owner = self.server_owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with owner.lock:
            owner.requests.append(RecordedRequest(self.command, self.path, dict(self.headers.items()), body))
            status = owner.statuses.pop(0) if owner.statuses else 200
        _reply(self, status, {"status": status} if status >= 300 else {"ok": True})

    do_PUT = do_POST


class HttpRecorder(_Threaded):
    """Records every POST/PUT; answers with the statuses in ``statuses`` first (then 200)."""

    handler = _RecorderHandler

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.statuses = list(statuses or [])


class _TokenHandler(BaseHTTPRequestHandler):
    server_owner: TestTokenServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        owner = self.server_owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = dict(parse_qsl(raw))
        status, body = owner.answer(self.path, form)
        _reply(self, status, body, {"Cache-Control": "no-store"})


class TestTokenServer(_Threaded):
    """A SMART Backend Services token endpoint (SMART App Launch 2.x, "Backend Services"; RFC 7523 §2.2,
    §3; RFC 6749 §4.4, §5.2).

    ``POST {url}`` with ``grant_type=client_credentials``,
    ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and ``client_assertion``:
    the JWT's signature is checked against ``jwks`` (the client's registered public keys, chosen by ``kid``),
    ``iss`` = ``sub`` = ``client_id``, ``aud`` = the token URL, ``exp`` in the future and at most 5 minutes
    ahead, ``jti`` never seen before. Errors are ``{"error": ..., "error_description": ...}`` (400, or 401 for
    ``invalid_client``). A good request gets ``mint(client_id, scope, expires_in)``.
    """

    __test__ = False  # not a test class, whatever its name says
    handler = _TokenHandler
    ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

    def __init__(self, *, client_id: str, jwks: dict[str, Any], mint: Callable[[str, str, int], str],
                 expires_in: int = 300, path: str = "/auth/token") -> None:
        super().__init__()
        self.client_id = client_id
        self.jwks = jwks
        self.mint = mint
        self.expires_in = expires_in
        self.path = path
        self.lock = threading.Lock()
        #: Every request: (form, HTTP status, answer).
        self.requests: list[tuple[dict[str, str], int, dict[str, Any]]] = []
        self.seen_jti: set[str] = set()
        #: Hand out this many unusable access tokens first (to see a client fetch a new one on 401).
        self.bad_tokens = 0

    @classmethod
    def for_node(cls, node: Any, *, client_id: str, jwks: dict[str, Any], expires_in: int = 300) -> TestTokenServer:
        """A token server whose tokens ``node`` (a running ``tests.conftest.ServerProc``) accepts: signed with
        its ``<data_dir>/secret.key`` for the default issuer/audience."""
        from interop.auth.tokens import TokenService

        secret = (Path(node.data_dir) / "secret.key").read_bytes().strip()
        service = TokenService(secret, issuer="interop", audience="interop", ttl=expires_in)
        return cls(client_id=client_id, jwks=jwks, expires_in=expires_in,
                   mint=lambda cid, scope, ttl: service.mint(subject=cid, scope=scope, ttl=ttl, client_id=cid))

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.path}"

    @property
    def granted(self) -> int:
        """How many access tokens were handed out."""
        return sum(1 for _, status, _ in self.requests if status == 200)

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            status, body = self._answer(path, form)
            self.requests.append((form, status, body))
            return status, body

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        def error(code: str, text: str) -> tuple[int, dict[str, Any]]:
            return (401 if code == "invalid_client" else 400), {"error": code, "error_description": text}

        if path.split("?")[0] != self.path:
            return 404, {"error": "not_found", "error_description": f"no endpoint at {path}"}
        if form.get("grant_type") != "client_credentials":
            return error("unsupported_grant_type", f"grant_type {form.get('grant_type')!r}")
        if form.get("client_assertion_type") != self.ASSERTION_TYPE or not form.get("client_assertion"):
            return error("invalid_client", "a jwt-bearer client_assertion is required")
        try:
            token = jwt.decode(form["client_assertion"], KeySet.import_key_set(self.jwks),
                               algorithms=["RS384", "ES384"])
        except (JoseError, ValueError) as exc:
            return error("invalid_client", f"client assertion not verified with the registered keys: "
                                           f"{type(exc).__name__}: {exc}")
        claims, now = token.claims, time.time()
        aud = claims.get("aud")
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return error("invalid_client", f"iss/sub must be the client_id {self.client_id!r}")
        if aud != self.url and not (isinstance(aud, list) and self.url in aud):
            return error("invalid_client", f"aud {aud!r} is not this token endpoint {self.url}")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now or exp > now + 300 + 5:
            return error("invalid_client", f"exp {exp!r} must be in the future and at most 5 minutes ahead")
        jti = claims.get("jti")
        if not jti or jti in self.seen_jti:
            return error("invalid_client", f"jti {jti!r} missing or already used")
        self.seen_jti.add(str(jti))
        scope = form.get("scope") or "system/*.cruds"
        if self.bad_tokens > 0:
            self.bad_tokens -= 1
            access = "not-a-valid-token." + uuid.uuid4().hex
        else:
            access = self.mint(self.client_id, scope, self.expires_in)
        return 200, {"access_token": access, "token_type": "bearer", "expires_in": self.expires_in, "scope": scope}


# -- pytest fixtures ----------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # used from a script (orthanc/selftest.py): no fixtures
    pass
else:

    @pytest.fixture(name="orthanc_factory")
    def orthanc_factory_fixture(tmp_path: Path) -> Iterator[Callable[..., OrthancPeer]]:
        """Make and start Orthanc peers (``OrthancPeer`` keyword arguments); all are stopped at teardown."""
        exe = require_orthanc()
        made: list[OrthancPeer] = []

        def make(name: str | None = None, **kw: Any) -> OrthancPeer:
            peer = OrthancPeer(root=tmp_path / (name or f"orthanc{len(made)}"), binary=exe, **kw)
            made.append(peer)
            return peer.start()

        yield make
        for peer in made:
            peer.stop(graceful=False)  # thrown away with tmp_path: no need to wait ~3 s for a clean exit

    @pytest.fixture(name="orthanc")
    def orthanc_fixture(orthanc_factory: Callable[..., OrthancPeer]) -> OrthancPeer:
        """A plain Orthanc PACS (DICOMweb on, no auto-routing)."""
        return orthanc_factory()

    @pytest.fixture(name="http_recorder")
    def http_recorder_fixture() -> Iterator[HttpRecorder]:
        with HttpRecorder() as rec:
            yield rec
