"""End-to-end check of orthanc.json + autoroute.lua against a real Orthanc.

1. Starts Orthanc with this folder's configuration (free loopback ports, temporary storage, StableAge 2 s,
   the "interop" modality pointed at the node under test), through ``tests/peers.py``'s ``OrthancPeer``, which
   the test suite uses too.
2. The node under test is either our server (``--node interop``: ``interop serve`` is started with a
   temporary data directory, or ``--node-dicom-port``/``--node-http`` point at one already running) or a
   dcmtk ``storescp`` with AE title INTEROP standing in for it (``--node storescp``, the default).
3. Stores a 3-instance CT study in Orthanc with ``storescu`` (calling AE MODALITY) and checks Orthanc's REST
   answers; waits until the study is stable and the node holds all 3 instances (QIDO-RS on our
   ``/dicomweb/studies`` with a bearer token from ``interop token``, or files in storescp's folder).
4. Writes an SR and a derived image into the same study from AE INTEROP (as our write-back does), and an SR
   by REST (as STOW-RS write-back does), waits for the study to become stable again and checks that nothing
   was sent back to the node.
5. Adds one more CT from MODALITY and checks that exactly that one instance is forwarded.

    .venv/bin/python orthanc/selftest.py [--node storescp|interop] [--keep]

Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root: tests/peers.py starts Orthanc for tests and for this

from tests.peers import OrthancPeer  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "TCP_NODELAY": "1"}
STABLE_AGE = 2


def system_tool(name: str) -> str:
    """dcmtk's/Orthanc's executable, never pynetdicom's look-alike ``storescu``/``storescp`` in the venv."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != VENV_BIN.resolve()
    )
    found = shutil.which(name, path=path + os.pathsep + "/usr/bin:/usr/sbin")
    if not found:
        sys.exit(f"{name} not found (apt-get install dcmtk orthanc orthanc-dicomweb)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None


def wait(fn: Callable[[], object], timeout: float, what: str):
    deadline = time.monotonic() + timeout
    err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001
            err = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}" + (f": {err}" if err else ""))


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    wait(up, 60, f"{what} on port {port}")


def check(cond: bool, msg: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + msg, flush=True)
    if not cond:
        raise AssertionError(msg)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def storescu(port: int, aet: str, aec: str, *paths: Path) -> None:
    subprocess.run(
        [system_tool("storescu"), "-R", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, paths)],
        env=ENV,
        check=True,
        capture_output=True,
        timeout=120,
    )


def new_uids(ds: pydicom.Dataset, series: str | None = None) -> pydicom.Dataset:
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node", choices=["storescp", "interop"], default="storescp")
    ap.add_argument("--node-dicom-port", type=int, help="use an already running node on this DICOM port")
    ap.add_argument("--node-http", help="its HTTP base URL (interop only), e.g. http://127.0.0.1:8080")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orthanc-selftest-"))
    procs: list[subprocess.Popen] = []
    peers: list[OrthancPeer] = []
    try:
        # ---- the node under test
        node_env = dict(ENV)
        node_port = a.node_dicom_port or free_port()
        counted_by: set[str] = {"files in storescp's folder"} if a.node == "storescp" else set()
        if a.node == "storescp":
            received = work / "node"
            received.mkdir()
            if not a.node_dicom_port:
                p = subprocess.Popen(
                    [system_tool("storescp"), "-aet", "INTEROP", "-od", str(received), str(node_port)],
                    env=ENV,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                procs.append(p)
                wait_port(node_port, p, "storescp")

            def node_count(study_uid: str) -> int:
                return sum(1 for f in received.iterdir() if pydicom.dcmread(f).StudyInstanceUID == study_uid)
        else:
            base = a.node_http
            if not a.node_dicom_port:
                http_port = free_port()
                base = f"http://127.0.0.1:{http_port}"
                node_env.update(
                    INTEROP_DATA_DIR=str(work / "interop"),
                    INTEROP_DICOM__PORT=str(node_port),
                    INTEROP_DICOM__HOST="127.0.0.1",
                    INTEROP_HTTP__PORT=str(http_port),
                    INTEROP_HTTP__HOST="127.0.0.1",
                )
                log = open(work / "interop.log", "wb")  # noqa: SIM115
                p = subprocess.Popen(
                    [str(VENV_BIN / "interop"), "serve"],
                    env=node_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                procs.append(p)
                wait_port(node_port, p, "interop serve")
            assert base, "--node-http is needed with --node-dicom-port for --node interop"
            token = (
                subprocess.run(
                    [str(VENV_BIN / "interop"), "token"], env=node_env, capture_output=True, text=True, check=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            auth = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}

            def node_count(study_uid: str) -> int:
                """QIDO-RS on the node (its own /api/studies where QIDO is not there yet)."""
                q = urllib.parse.urlencode({"StudyInstanceUID": study_uid})
                try:
                    if not http(f"{base}/dicomweb/studies?{q}", headers=auth):
                        return 0
                    counted_by.add("QIDO-RS /dicomweb/studies")
                except urllib.error.HTTPError as exc:
                    if exc.code != 404:
                        raise
                    counted_by.add("/api/studies (no QIDO-RS yet)")
                    try:
                        return int(http(f"{base}/api/studies/{study_uid}", headers=auth)["instance_count"])
                    except urllib.error.HTTPError as exc2:
                        if exc2.code == 404:
                            return 0
                        raise
                return len(http(f"{base}/dicomweb/studies/{study_uid}/instances", headers=auth) or [])

        # ---- Orthanc (this folder's configuration through make_config.render, started by tests/peers.py)
        orthanc = OrthancPeer(root=work / "orthanc", stable_age=STABLE_AGE, autoroute=True, node_port=node_port,
                              binary=system_tool("Orthanc"))
        peers.append(orthanc)
        try:
            orthanc.start(timeout=60)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from exc
        cfg = orthanc.config()
        o_http, o_dicom = orthanc.http_port, orthanc.dicom_port
        ob = orthanc.url
        print(f"Orthanc {http(ob + '/system')['Version']} on {o_http}/{o_dicom}; node ({a.node}) on {node_port}")
        check(http(ob + "/plugins") is not None and "dicom-web" in http(ob + "/plugins"), "DICOMweb plugin loaded")
        check(http(ob + "/modalities/interop/configuration")["Port"] == node_port, "modality 'interop' configured")

        jobs = orthanc.jobs
        lua_log = orthanc.lua_log

        # ---- 1. a CT study from a modality is forwarded
        src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        study, series = generate_uid(), generate_uid()
        src.StudyInstanceUID = study
        files = []
        for i in range(3):
            ds = new_uids(src, series)
            ds.InstanceNumber = i + 1
            files.append(work / f"ct{i}.dcm")
            ds.save_as(files[-1])
        storescu(o_dicom, "MODALITY", cfg["DicomAet"], *files)
        found = http(
            ob + "/tools/find",
            json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study}, "Expand": True}).encode(),
        )
        check(len(found) == 1 and len(found[0]["Series"]) == 1, "Orthanc indexed the study (REST /tools/find)")
        qido = http(f"{ob}/dicom-web/studies?StudyInstanceUID={study}")
        check(len(qido) == 1, "Orthanc answers QIDO-RS for it (/dicom-web/studies)")
        wait(lambda: node_count(study) == 3, 30 + STABLE_AGE, "the node to hold 3 instances")
        check(True, f"study auto-routed: node holds 3 instances (counted by {', '.join(sorted(counted_by))})")
        wait(lambda: all(j["State"] == "Success" for j in jobs()), 10, "the job to finish")
        check(len(jobs()) == 1, "one store job, succeeded")

        # ---- 2. results written back by the node do not bounce
        sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
        for attr in ("PatientID", "PatientName", "StudyInstanceUID"):
            setattr(sr, attr, getattr(src, attr))
        new_uids(sr).save_as(work / "sr_dimse.dcm")
        new_uids(sr).save_as(work / "sr_stow.dcm")
        derived = new_uids(pydicom.dcmread(files[0]))
        derived.SeriesDescription = "AI heat-map (written back by the node)"
        derived.save_as(work / "derived.dcm")
        n_log = len(lua_log())
        storescu(o_dicom, "INTEROP", cfg["DicomAet"], work / "sr_dimse.dcm", work / "derived.dcm")
        http(ob + "/instances", (work / "sr_stow.dcm").read_bytes())
        said = wait(lambda: lua_log()[n_log:], 10 + STABLE_AGE, "OnStableStudy after the write-back")[0]
        check("nothing new to send" in said, f"write-back into the study is not sent back: {said}")
        time.sleep(1)
        check(len(jobs()) == 1 and node_count(study) == 3, "still one job; the node still holds 3 instances")

        # ---- 3. a late instance from the modality is forwarded alone
        late = new_uids(pydicom.dcmread(files[0]), series)
        late.InstanceNumber = 4
        late.save_as(work / "late.dcm")
        storescu(o_dicom, "MODALITY", cfg["DicomAet"], work / "late.dcm")
        wait(lambda: node_count(study) == 4, 30 + STABLE_AGE, "the late instance at the node")
        wait(lambda: len(jobs()) == 2 and all(j["State"] == "Success" for j in jobs()), 10, "the second job")
        newest = max(jobs(), key=lambda j: j["CreationTime"])
        check(newest["Content"]["InstancesCount"] == 1, "a late instance is forwarded alone (job of 1 instance)")
        print("all checks passed")
        return 0
    except AssertionError as e:
        print(f"FAILED: {e}\nlogs in {work}")
        a.keep = True
        return 1
    finally:
        for peer in peers:
            peer.stop()
        for p in reversed(procs):
            stop(p)
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
