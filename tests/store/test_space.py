"""Disk-space backpressure (interop.store.space): below the free-space watermark the node refuses new data
before writing any of it: C-STORE A700 (dcmtk's storescu as the peer), STOW-RS 503 with Retry-After and an
OperationOutcome, HL7 AE with ERR-3 207; /readyz and /metrics say so; with room again it takes data as before."""

from __future__ import annotations

import httpx
import pytest

from interop.errors import InsufficientStorage
from interop.hl7v2.mllp import send as mllp_send
from interop.store.space import Space, SpaceGuard, shortage, watermark
from tests.conftest import ServerProc
from tests.dicom.peers import blob_files, counts, ct_small, fresh_instance, store_responses, storescu, temp_files
from tests.dicomweb.conftest import stow

GiB = 1 << 30
#: A watermark no disk here can meet: 1 PiB free.
HUGE = str(1 << 50)


def test_watermark_is_the_larger_floor() -> None:
    assert watermark(100 * GiB, GiB, 5) == 5 * GiB
    assert watermark(10 * GiB, GiB, 5) == GiB
    assert watermark(10 * GiB, 0, 0) == 0


def test_shortage_says_why_only_below_the_watermark() -> None:
    assert shortage(Space(free=6 * GiB, total=100 * GiB), GiB, 5) is None
    assert shortage(Space(free=5 * GiB, total=100 * GiB), GiB, 5) is None  # at the watermark: still taken
    reason = shortage(Space(free=4 * GiB, total=100 * GiB), GiB, 5)
    assert reason is not None
    assert "4.0 GiB free of 100.0 GiB" in reason and "5.0 GiB" in reason and "min_free_bytes" in reason
    assert shortage(Space(free=0, total=GiB), 0, 0) is None  # both 0: the check is off


def test_guard_reads_statvfs_at_most_once_per_period(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    free = [10 * GiB]
    reads: list[int] = []

    def measure(_path) -> Space:  # type: ignore[no-untyped-def]
        reads.append(1)
        return Space(free=free[0], total=100 * GiB)

    guard = SpaceGuard(tmp_path, min_free_bytes=GiB, min_free_percent=5, measure=measure, clock=lambda: now[0])
    for _ in range(1000):
        guard.check()
    assert len(reads) == 1, "a check within the cache period must not call statvfs"
    free[0] = GiB
    guard.check()  # still the cached reading
    now[0] = 1.0
    with pytest.raises(InsufficientStorage) as err:
        guard.check()
    assert (err.value.dimse_status, err.value.http_status, err.value.hl7_ack, err.value.hl7_error_code) == (
        0xA700, 503, "AE", "207")
    assert len(reads) == 2
    free[0] = 20 * GiB
    now[0] = 2.5
    guard.check()


def test_guard_on_a_real_volume(tmp_path) -> None:  # type: ignore[no-untyped-def]
    SpaceGuard(tmp_path, min_free_bytes=0, min_free_percent=0).check()
    with pytest.raises(InsufficientStorage):
        SpaceGuard(tmp_path, min_free_bytes=1 << 50, min_free_percent=0).check()


ORU = (
    b"MSH|^~\\&|LIS|LAB|INTEROP|HOSP|20240101120000||ORU^R01|MSG-SPACE-1|P|2.5.1\r"
    b"PID|1||P-SPACE^^^HOSP^MR||DOE^JANE||19600101|F\r"
    b"OBR|1|ORD-1|FIL-1|24326-1^Electrolytes panel^LN|||20240101110000\r"
    b"OBX|1|NM|2951-2^Sodium^LN||140|mmol/L|||||F|||20240101113000\r"
)


@pytest.mark.peer
def test_below_the_watermark_nothing_is_stored_and_every_wire_says_why(server_factory: type, tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = server_factory({"INTEROP_STORAGE__MIN_FREE_BYTES": HUGE}, start=False)  # type: ignore[operator]
    srv.start(ready=False)  # below the watermark the node is up, but not ready
    files = [fresh_instance(ct_small(), tmp_path / "in") for _ in range(3)]

    # C-STORE from dcmtk: each refused with A700, nothing stored, no file left behind.
    out = storescu(srv, *files, extra=["--no-halt"])
    assert store_responses(out.stdout + out.stderr) == ["Refused: OutOfResources"] * 3, out.stdout + out.stderr
    # STOW-RS: 503 before the body is stored, Retry-After, an OperationOutcome saying why.
    r = stow(srv, [files[0].read_bytes()])
    assert r.status_code == 503
    assert r.headers["retry-after"] == "60"
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient" and "nearly full" in outcome["issue"][0]["diagnostics"]
    # HL7 v2: AE, ERR-3 207, and the reason.
    ack = mllp_send("127.0.0.1", srv.mllp_port, [ORU])[0].decode()
    assert "MSA|AE|MSG-SPACE-1" in ack
    err = next(seg for seg in ack.split("\r") if seg.startswith("ERR"))
    assert "207" in err and "nearly full" in ack
    assert counts(srv) == (0, 0, 0)
    assert blob_files(srv) == set() and temp_files(srv) == []
    with srv.client() as c:
        assert c.get("/fhir/Observation").json().get("total", 0) == 0
    # Operators see it.
    ready = httpx.get(f"{srv.base_url}/readyz", timeout=10)
    assert ready.status_code == 503 and "nearly full" in ready.json()["checks"]["storage_space"]
    metrics = httpx.get(f"{srv.base_url}/metrics", timeout=10).text
    assert "interop_storage_below_watermark 1.0" in metrics
    floor = next(ln for ln in metrics.splitlines() if ln.startswith("interop_storage_min_free_bytes "))
    assert float(floor.split()[1]) == float(HUGE)

    # Room again (the watermark back to its default): the same instances and message are taken.
    srv.stop()
    del srv.extra_env["INTEROP_STORAGE__MIN_FREE_BYTES"]
    srv.start()
    out = storescu(srv, *files)
    assert store_responses(out.stdout + out.stderr) == ["Success"] * 3
    assert stow(srv, [fresh_instance(ct_small(), tmp_path / "more").read_bytes()]).status_code == 200
    assert "MSA|AA|MSG-SPACE-1" in mllp_send("127.0.0.1", srv.mllp_port, [ORU])[0].decode()
    assert counts(srv)[2] == 4
    ready = httpx.get(f"{srv.base_url}/readyz", timeout=10).json()
    assert ready["checks"]["storage_space"] == "ok"
    assert "interop_storage_below_watermark 0.0" in httpx.get(f"{srv.base_url}/metrics", timeout=10).text

