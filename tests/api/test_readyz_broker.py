"""/readyz reflects the job broker: a real Redis (the Celery executor's broker) answers ``ok``; a broker URL on
a closed port makes the node not ready (503) with the reason, within the check's short timeout; the local
executor has no broker and says ``local`` (ready)."""

from __future__ import annotations

import time

import httpx
import pytest

from interop.jobs.executors import broker_ping
from tests.conftest import ServerProc
from tests.support import free_port

pytestmark = pytest.mark.peer


def _celery(broker: str) -> dict[str, str]:
    return {"INTEROP_JOBS__EXECUTOR": "celery", "INTEROP_JOBS__BROKER_URL": broker}


def test_local_executor_says_local(server: ServerProc) -> None:
    r = httpx.get(f"{server.base_url}/readyz", timeout=10)
    assert r.status_code == 200
    assert r.json()["checks"]["broker"] == "local"


def test_redis_broker_up_is_ready(server_factory: type, redis_url: str) -> None:
    srv: ServerProc = server_factory(_celery(redis_url))  # type: ignore[operator]
    r = httpx.get(f"{srv.base_url}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["broker"] == "ok"


def test_broker_on_a_closed_port_is_503_with_the_reason_and_never_hangs(server_factory: type) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    srv: ServerProc = server_factory(_celery(closed), start=False)  # type: ignore[operator]
    srv.start(ready=False)
    started = time.monotonic()
    r = httpx.get(f"{srv.base_url}/readyz", timeout=10)
    assert time.monotonic() - started < 3.5, "the broker check must be bounded by its short timeout"
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"].startswith("error:") and "refused" in body["checks"]["broker"].lower()
    assert body["checks"]["database"] == "ok" and body["checks"]["dicom"] == "ok"


def test_broker_ping_is_bounded_by_its_timeout() -> None:
    # An address that never answers a SYN (TEST-NET-1, RFC 5737) where routing drops it, or refuses at once.
    started = time.monotonic()
    got = broker_ping("redis://192.0.2.1:6379/0", 1.0)
    assert time.monotonic() - started < 2.5
    assert got.startswith("error:")
