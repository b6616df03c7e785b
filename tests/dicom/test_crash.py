"""Kill the node (SIGKILL) in the middle of a C-STORE transfer: nothing acknowledged is lost, nothing
half-written is visible, and the transfer can simply be repeated (DESIGN promises 1 and 2)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from interop.store.dicomfile import check_complete
from tests.conftest import ServerProc
from tests.dicom.peers import (
    DCMTK_ENV,
    counts,
    ct_small,
    dataset_bytes,
    index,
    store_responses,
    storescu,
    temp_files,
)
from tests.support import require_tool

pytestmark = pytest.mark.peer

N_INSTANCES = 300
KILL_AFTER = 100


def _make_series(folder: Path, n: int) -> tuple[str, dict[str, Path]]:
    """``n`` CT instances of one new study, each file named by its SOP Instance UID."""
    ds = dcmread(ct_small())
    # storescu drops trailing padding when it re-encodes; without it, what is sent is what the file holds.
    del ds.DataSetTrailingPadding
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    folder.mkdir()
    files: dict[str, Path] = {}
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        files[ds.SOPInstanceUID] = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(files[ds.SOPInstanceUID])
    return str(ds.StudyInstanceUID), files


def _send_and_kill(server: ServerProc, folder: Path) -> tuple[set[str], str]:
    """storescu the folder; SIGKILL the node after KILL_AFTER successes. Returns the acknowledged UIDs."""
    proc = subprocess.Popen(
        [require_tool("storescu"), "-v", "-R", "+sd", "-aec", "INTEROP", "127.0.0.1", str(server.dicom_port),
         str(folder)],
        env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    acked: set[str] = set()
    current: str | None = None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip()).stem
        elif "Received Store Response (Success)" in line:
            assert current is not None
            acked.add(current)
            if len(acked) == KILL_AFTER:
                server.kill()
    proc.wait(timeout=60)
    return acked, "".join(lines)


@pytest.fixture(params=["sqlite", "postgresql"])
def node(request: pytest.FixtureRequest, server_factory: type) -> ServerProc:
    env = {"INTEROP_DATABASE_URL": request.getfixturevalue("postgres_url")} if request.param == "postgresql" else {}
    return server_factory(env)  # type: ignore[no-any-return,operator]


def test_kill_during_c_store_loses_nothing_acknowledged(node: ServerProc, tmp_path: Path) -> None:
    server = node
    study_uid, sent = _make_series(tmp_path / "series", N_INSTANCES)
    acked, log = _send_and_kill(server, tmp_path / "series")
    assert KILL_AFTER <= len(acked) < N_INSTANCES, f"the kill must land mid-transfer:\n{log[-2000:]}"

    server.start()
    rows = {r.sop_uid: r for r in index(server)}
    assert acked <= set(rows), f"acknowledged but lost: {sorted(acked - set(rows))[:5]}"
    assert len(set(rows) - acked) <= 1, "only the instance in flight may be stored without its acknowledgement"
    for uid, row in rows.items():
        assert row.blob_path.is_file(), f"index row {uid} points at a missing file"
        check_complete(row.blob_path, row.dataset_offset, row.transfer_syntax_uid)
        assert dataset_bytes(row.blob_path) == dataset_bytes(sent[uid]), f"{uid} is not what was sent"
    assert temp_files(server) == [], "partial receive files must be gone after a restart"

    check = subprocess.run([sys.executable, "-m", "interop", "store", "check"], env=server.env,
                           capture_output=True, text=True, check=True)
    orphans = check.stdout.split()
    assert len(orphans) <= 1, f"more than the one object in flight has no index row: {orphans}"
    assert not {r.blob_path.name for r in rows.values()} & set(orphans)

    # The sender simply sends everything again: the rest arrives, nothing is duplicated.
    again = storescu(server, tmp_path / "series")
    assert store_responses(again.stdout + again.stderr) == ["Success"] * N_INSTANCES
    assert counts(server) == (1, 1, N_INSTANCES)

    # A study that was receiving when the node died becomes ready after restart (work in flight resumes).
    with server.client() as http:
        deadline = time.monotonic() + 10
        while (state := http.get(f"/api/studies/{study_uid}").json())["state"] != "ready":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
    assert state["instance_count"] == N_INSTANCES
