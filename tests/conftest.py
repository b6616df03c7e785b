"""Shared fixtures: real DICOM files, a real ``interop serve`` process, a throwaway PostgreSQL cluster.

Peers (dcmtk, PostgreSQL, Orthanc) are installed by ``tests/run.sh``; when one is missing the tests that
need it are skipped with the reason, never passed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dicomdir_study() -> list[Path]:
    """Patient 77654033 in pydicom's ``dicomdirtests``: two real studies (CR, 3 series; CT, 1 series), 7 files."""
    root = Path(str(get_testdata_file("DICOMDIR"))).parent
    files = sorted(p for p in (root / "77654033").rglob("*") if p.is_file())
    assert files, "pydicom dicomdirtests files are missing"
    return files


@pytest.fixture(scope="session")
def dicomdir_all() -> list[Path]:
    """All 31 instances (3 patient folders, 2 patient IDs, 6 studies) of pydicom's ``dicomdirtests``.

    Only the numbered patient folders: the DICOMDIR variants, READMEs and ``TINY_ALPHA`` beside them are not
    part of that set."""
    root = Path(str(get_testdata_file("DICOMDIR"))).parent
    files = sorted(p for d in root.iterdir() if d.is_dir() and d.name.isdigit() for p in d.rglob("*") if p.is_file())
    assert len(files) == 31, f"expected 31 dicomdirtests instances, found {len(files)}"
    return files


# -- a real server process --------------------------------------------------------------------------------


@dataclass
class ServerProc:
    """``interop serve`` in a child process, on free ports and its own data directory."""

    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    mllp_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
        env.update(
            INTEROP_DATA_DIR=str(self.data_dir),
            INTEROP_DICOM__PORT=str(self.dicom_port),
            INTEROP_DICOM__HOST="127.0.0.1",
            INTEROP_HTTP__PORT=str(self.http_port),
            INTEROP_HTTP__HOST="127.0.0.1",
            INTEROP_HL7__PORT=str(self.mllp_port),
            INTEROP_HL7__HOST="127.0.0.1",
            INTEROP_STUDIES__QUIET_SECONDS="1",
            # No AI apps run unless a test asks for them (the default rules route CR/MR/labs to the demo apps).
            INTEROP_ROUTING__RULES="[]",
        )
        env.update(self.extra_env)
        return env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicomweb"

    def start(self, timeout: float = 60, *, ready: bool = True) -> ServerProc:
        """Start ``interop serve``; wait for ``/readyz`` to answer 200 (with ``ready=False``: to answer at all, for
        a node that is up but not ready, e.g. its broker down)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "interop", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"interop serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.base_url}/readyz", timeout=5)
                if r.status_code == 200 or (not ready and r.json()["checks"].get("dicom") == "ok"):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"interop serve did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the crash tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def token(self, scope: str = "system/*.cruds", ttl: int | None = None) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "interop", "token", "--scope", scope] + (["--ttl", str(ttl)] if ttl else []),
            env=self.env, capture_output=True, text=True, check=True,
        )
        return out.stdout.strip()

    def client(self, scope: str = "system/*.cruds") -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token(scope)}"},
                            timeout=60)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type]:
    """Make and start servers; every one is stopped at teardown."""
    made: list[ServerProc] = []

    def make(extra_env: dict[str, str] | None = None, *, start: bool = True, name: str | None = None) -> ServerProc:
        srv = ServerProc(data_dir=tmp_path / (name or f"node{len(made)}"), extra_env=extra_env or {})
        made.append(srv)
        return srv.start() if start else srv

    yield make  # type: ignore[misc]
    for srv in made:
        srv.stop()


@pytest.fixture
def server(server_factory: type) -> ServerProc:
    """A fresh node on SQLite with a 1 s study quiet period."""
    return server_factory()  # type: ignore[no-any-return]


# -- PostgreSQL ----------------------------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port; yields its base URL (no database name)."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (tests/run.sh: apt-get install postgresql)")
    # Not under pytest's tmp root: that is private to root, and PostgreSQL runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="interop-pg-"))
    data = root / "data"
    port = free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                             "--no-sync"], check=True, capture_output=True)
    subprocess.run(
        prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "-t", "60",
                  "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
        check=True, capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway Redis server on a free port (the Celery broker)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (tests/run.sh: apt-get install redis-server)")
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="interop-redis-"))
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new empty database on the throwaway cluster."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = postgres_server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database the store supports: SQLite in WAL mode and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return str(request.getfixturevalue("postgres_url"))
