"""C-STORE ingest: our node against Orthanc 1.10, same machine, same files, same storescu.

Part 1, throughput. Our node and Orthanc (the shipped ``orthanc/orthanc.json`` minus auto-routing: SQLite
index, fsync on) are started once on free loopback ports with fresh temporary storage, next to three reference
points: dcmtk ``storescp`` (writes files: no index, no fsync), and ``bench/bare_scp.py``, a bare pynetdicom SCP
that either answers at once (``pynetdicom-noop``: what pynetdicom itself costs) or writes and fsyncs each file
without an index (``pynetdicom-fsync``: the floor for a durable store on pynetdicom). Each round makes a folder
of ``--n`` instances from pydicom's ``CT_small.dcm`` (39 KB) with fresh Study/Series/SOP Instance UIDs and sends
it with one association, ``TCP_NODELAY=1 storescu +sd``, to each server in turn; the order rotates every round
so no one always goes first. The time is storescu's wall time; after each run the server is asked how many
instances of that study it holds, and a run that lost instances is an error. We print instances/s per round,
the medians, and ours/Orthanc (ratio of medians, and the median of the per-round ratios).

Part 2, memory. Peak resident memory of our DIMSE process (VmRSS / VmHWM from ``/proc/<pid>/status``, sampled
every 10 ms) while it receives one study of ``--rss-n`` synthetic 512x512 CT instances (~0.5 MB each) in one
association, with RSS printed at the start and after 100, 500 and 1000 acknowledged instances; then one single
instance of ``--big-mb`` MB (multi-frame grayscale word secondary capture). A node that streams to disk stays
flat; one that buffers instances grows by their size. Orthanc is measured the same way for reference.

    .venv/bin/python bench/ingest_vs_orthanc.py [--n 300 --rounds 3] [--rss-n 1000 --big-mb 200] [--json out.json]

Loopback only; every server is stopped (and Orthanc's exit waited for) and temporary files removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
INTEROP_AET = "INTEROP"
ORTHANC_AET = "ORTHANC"
#: interop and Orthanc are compared; the others are reference points (see the module docstring).
ALL_SERVERS = ("interop", "orthanc", "storescp", "pynetdicom-fsync", "pynetdicom-noop")
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}


def system_tool(name: str) -> str:
    """dcmtk's/Orthanc's executable, never pynetdicom's look-alike ``storescu``/``storescp`` in the venv."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != VENV_BIN.resolve()
    )
    found = shutil.which(name, path=path + os.pathsep + "/usr/bin:/usr/sbin")
    if not found:
        sys.exit(f"{name} not found (apt-get install dcmtk orthanc orthanc-dicomweb)")
    return found


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def http(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def wait_until(fn: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if fn():
                return
        except Exception as exc:  # noqa: BLE001 - report the last one if it never succeeds
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB ({} once it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def listener_pid(root: int, port: int) -> int:
    """The process in ``root``'s tree that holds the listening TCP socket on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
    return root


CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Longest total time the throughput part spends waiting for a quiet machine and repeating disturbed runs.
SETTLE_BUDGET_S = 600


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its live descendants (all threads)."""
    total = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12])  # utime, stime
    return total / CLK_TCK


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (storescu)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class ForeignLoad:
    """CPU used by processes that are not part of the benchmark, over a span of time, as cores busy."""

    def __init__(self, roots: list[int]):
        self.roots = roots

    def _ours(self) -> float:
        return own_cpu_s() + sum(tree_cpu_s(r) for r in self.roots)

    def __enter__(self) -> ForeignLoad:
        self.t0, self.busy0, self.ours0 = time.perf_counter(), machine_busy_s(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        foreign = (machine_busy_s() - self.busy0) - (self._ours() - self.ours0)
        self.cores = max(0.0, foreign) / wall if wall > 0 else 0.0


def settle(roots: list[int], limit: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until other processes use less than ``limit`` cores; return that load."""
    deadline = time.monotonic() + max_wait
    while True:
        with ForeignLoad(roots) as load:
            time.sleep(0.5)
        if load.cores < limit or time.monotonic() > deadline:
            return load.cores


# --------------------------------------------------------------------------- test data


def _with_uids(ds: Dataset, study: str, series: str, number: int) -> None:
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number


def make_ct_small_study(folder: Path, n: int, tag: str) -> str:
    """``n`` copies of CT_small.dcm (~39 KB) in one new study/series; returns the Study Instance UID."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    ds.PatientID = f"BENCH-{tag}"
    ds.AccessionNumber = tag[:16]
    for i in range(n):
        _with_uids(ds, study, series, i + 1)
        ds.save_as(folder / f"ct{i:05d}.dcm", enforce_file_format=True)
    return study


def make_big_ct_study(folder: Path, n: int, tag: str) -> str:
    """``n`` synthetic 512x512 16-bit CT slices (~0.5 MB each, built from CT_small's pixels)."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = np.kron(ds.pixel_array, np.ones((4, 4), dtype=ds.pixel_array.dtype))  # 128 -> 512
    ds.Rows, ds.Columns = base.shape
    ds.PixelSpacing = [0.5, 0.5]
    study, series = generate_uid(), generate_uid()
    ds.PatientID = f"BENCH-{tag}"
    for i in range(n):
        _with_uids(ds, study, series, i + 1)
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        ds.SliceLocation = float(i)
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.save_as(folder / f"ct{i:05d}.dcm", enforce_file_format=True)
    return study


def make_huge_instance(path: Path, megabytes: int) -> str:
    """One Multi-frame Grayscale Word Secondary Capture instance with ``megabytes`` MB of pixel data."""
    frames = max(1, megabytes * 1024 * 1024 // (512 * 512 * 2))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = "BENCH-HUGE", "Bench^Huge"
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.ConversionType = "20261121", "120000", "OT", "WSD"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ramp = (np.arange(512 * 512, dtype=np.uint32) % 65536).astype(np.uint16).tobytes()
    ds.PixelData = ramp * frames
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID)


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    aet: str
    dicom_port: int
    proc: subprocess.Popen | None = None
    count: Callable[[str], int] = lambda uid: -1
    log_path: Path | None = None
    log_file: object = None
    stop_timeout: float = 30.0
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log(f"  {self.name} did not exit within {self.stop_timeout:.0f} s of SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.log_file:
            self.log_file.close()


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> tuple[subprocess.Popen, object]:
    f = open(log_path, "wb")  # noqa: SIM115 - closed by Server.stop
    proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    return proc, f


def start_orthanc(work: Path) -> Server:
    spec = importlib.util.spec_from_file_location("orthanc_make_config", REPO / "orthanc" / "make_config.py")
    assert spec and spec.loader
    mc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc)
    http_port, dicom_port = free_port(), free_port()
    # The shipped configuration, minus auto-routing (nothing should leave Orthanc during the benchmark).
    cfg = mc.render(http_port=http_port, dicom_port=dicom_port, storage=work / "orthanc-db", autoroute=False)
    cfg_path = work / "orthanc.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    proc, f = _spawn([system_tool("Orthanc"), str(cfg_path)], NODELAY_ENV, work / "orthanc.log", work)
    base = f"http://127.0.0.1:{http_port}"

    def count(study_uid: str) -> int:
        body = json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}).encode()
        return len(http(f"{base}/tools/find", data=body, headers={"Content-Type": "application/json"}))

    server = Server("orthanc", ORTHANC_AET, dicom_port, proc, count, work / "orthanc.log", f)
    wait_port(http_port, proc, 60, "Orthanc")
    wait_port(dicom_port, proc, 60, "Orthanc")
    server.extra["version"] = http(f"{base}/system")["Version"]
    return server


def start_interop(work: Path) -> Server:
    http_port, dicom_port = free_port(), free_port()
    env = {
        **os.environ,
        "INTEROP_DATA_DIR": str(work / "interop-data"),
        "INTEROP_DICOM__PORT": str(dicom_port),
        "INTEROP_DICOM__HOST": "127.0.0.1",
        "INTEROP_HTTP__PORT": str(http_port),
        "INTEROP_HTTP__HOST": "127.0.0.1",
    }
    env.pop("INTEROP_CONFIG", None)
    proc, f = _spawn([str(VENV_BIN / "interop"), "serve"], env, work / "interop.log", work)
    base = f"http://127.0.0.1:{http_port}"
    server = Server("interop", INTEROP_AET, dicom_port, proc, log_path=work / "interop.log", log_file=f)
    wait_until(lambda: _healthy(base, proc), 120, "interop /healthz")
    wait_port(dicom_port, proc, 60, "interop")
    token = (
        subprocess.run(
            [str(VENV_BIN / "interop"), "token"], env=env, capture_output=True, text=True, check=True, timeout=60
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    auth = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}

    def count(study_uid: str) -> int:
        """Instances of the study the node holds: QIDO-RS, or the node's own study API where QIDO is absent."""
        q = urllib.parse.urlencode({"StudyInstanceUID": study_uid, "includefield": "00201208"})
        try:
            found = http(f"{base}/dicomweb/studies?{q}", headers=auth) or []
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            try:
                return int(http(f"{base}/api/studies/{study_uid}", headers=auth)["instance_count"])
            except urllib.error.HTTPError as exc2:
                if exc2.code == 404:
                    return 0
                raise
        if not found:
            return 0
        value = found[0].get("00201208", {}).get("Value")
        if value:
            return int(value[0])
        return len(http(f"{base}/dicomweb/studies/{study_uid}/instances", headers=auth) or [])

    server.count = count
    server.extra["http"] = base
    return server


def _healthy(base: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"interop serve exited with {proc.returncode}")
    with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
        return r.status == 200


def start_storescp(work: Path) -> Server:
    port = free_port()
    out = work / "storescp-out"
    out.mkdir()
    proc, f = _spawn(
        [system_tool("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
        NODELAY_ENV,
        work / "storescp.log",
        work,
    )
    wait_port(port, proc, 30, "storescp")

    def count(study_uid: str) -> int:  # storescp files everything flat; all files are from this run's folder
        return sum(1 for _ in out.iterdir())

    def reset() -> None:
        shutil.rmtree(out)
        out.mkdir()

    server = Server("storescp", "STORESCP", port, proc, count, work / "storescp.log", f, stop_timeout=10)
    server.extra["reset"] = reset
    return server


def start_bare(work: Path, mode: str) -> Server:
    """bench/bare_scp.py: pynetdicom alone (``noop``) or pynetdicom + write and fsync, no index (``fsync``)."""
    port = free_port()
    out = work / f"bare-{mode}"
    name = f"pynetdicom-{mode}"
    proc, f = _spawn(
        [sys.executable, str(REPO / "bench" / "bare_scp.py"), "--port", str(port), "--out", str(out), "--mode", mode],
        NODELAY_ENV,
        work / f"{name}.log",
        work,
    )
    wait_port(port, proc, 60, name)

    def count(study_uid: str) -> int:
        return sum(1 for _ in out.iterdir()) if mode == "fsync" else -1

    def reset() -> None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()

    server = Server(name, "BARE", port, proc, count, work / f"{name}.log", f, stop_timeout=10)
    server.extra["reset"] = reset
    return server


# --------------------------------------------------------------------------- sending


def storescu_cmd(server: Server, path: Path, verbose: bool = False) -> list[str]:
    cmd = [system_tool("storescu"), "-aet", "BENCH", "-aec", server.aet]
    if verbose:
        cmd.append("-v")
    if path.is_dir():
        cmd.append("+sd")
    return [*cmd, "127.0.0.1", str(server.dicom_port), str(path)]


def send(server: Server, folder: Path, timeout: float) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(storescu_cmd(server, folder), env=NODELAY_ENV, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0 or "Store Failed" in r.stderr or "Failed" in r.stdout:
        raise RuntimeError(f"storescu to {server.name} failed (rc {r.returncode}): {r.stderr[-2000:]}")
    return elapsed


class RssSampler:
    """Samples VmRSS of one pid every ``interval`` seconds in a thread; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid, self.interval = pid, interval
        self.max_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_kib = max(self.max_kib, proc_status(self.pid).get("VmRSS", 0))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.max_kib = max(self.max_kib, proc_status(self.pid).get("VmRSS", 0))


def send_watching_rss(server: Server, pid: int, path: Path, marks: list[int], timeout: float) -> dict:
    """Send with ``storescu -v``; record RSS when the ``marks``-th responses arrive."""
    start = proc_status(pid)
    at: dict[int, dict[str, int]] = {}
    acked = 0
    t0 = time.perf_counter()
    with RssSampler(pid) as sampler:
        p = subprocess.Popen(
            storescu_cmd(server, path, verbose=True),
            env=NODELAY_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        assert p.stdout is not None
        tail: list[str] = []
        for line in p.stdout:
            tail = (tail + [line])[-20:]
            if "Received Store Response" in line:
                acked += 1
                if "Success" not in line and "Warning" not in line:
                    raise RuntimeError(f"{server.name} refused an instance: {line.strip()}")
                if acked in marks:
                    at[acked] = {**proc_status(pid), "sampled_max": sampler.max_kib}
        rc = p.wait()
        timer.cancel()
    elapsed = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"storescu -v to {server.name} failed (rc {rc}): {''.join(tail)}")
    time.sleep(0.3)
    return {
        "start": start,
        "at": at,
        "end": proc_status(pid),
        "sampled_max_kib": sampler.max_kib,
        "acked": acked,
        "seconds": elapsed,
    }


# --------------------------------------------------------------------------- the benchmark


def machine() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    scu = subprocess.run([system_tool("storescu"), "--version"], capture_output=True, text=True).stdout
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "storescu": (re.findall(r"v[\d.]+", scu) or ["?"])[0],
    }


def throughput(
    servers: list[Server], work: Path, n: int, rounds: int, timeout: float, settle_limit: float, retries: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per server, instances/s of each round, and the other processes' CPU load (cores) during each run.

    A run during which other processes kept more than ``settle_limit`` cores busy is repeated (with fresh
    UIDs) up to ``retries`` times; the last attempt counts either way, and its load is reported. Waiting and
    repeating stop after ``SETTLE_BUDGET_S`` in all, so a machine that never gets quiet still finishes.
    """
    budget_end = time.monotonic() + SETTLE_BUDGET_S
    rates: dict[str, list[float]] = {s.name: [] for s in servers}
    foreign: dict[str, list[float]] = {s.name: [] for s in servers}
    roots = [s.proc.pid for s in servers if s.proc is not None]
    for r in range(rounds):
        folder = work / f"round{r}"
        study = make_ct_small_study(folder, n, f"R{r}")
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        line = []
        for s in order:
            for attempt in range(retries + 1):
                if attempt:
                    shutil.rmtree(folder)
                    study = make_ct_small_study(folder, n, f"R{r}A{attempt}")
                if "reset" in s.extra:
                    s.extra["reset"]()
                patient = settle_limit > 0 and time.monotonic() < budget_end
                if patient:
                    settle(roots, settle_limit, 30)
                with ForeignLoad(roots) as load:
                    elapsed = send(s, folder, timeout)
                got = s.count(study)
                if got not in (n, -1):
                    wait_until(lambda s=s, study=study: s.count(study) == n, 10, f"{s.name} to index {n} instances")
                if not patient or load.cores < settle_limit:
                    break
            rate = n / elapsed
            rates[s.name].append(rate)
            foreign[s.name].append(load.cores)
            notes = []
            if load.cores >= 0.1:
                notes.append(f"others busy {load.cores:.2f} cores")
            if attempt:
                notes.append(f"attempt {attempt + 1}")
            line.append(f"{s.name} {rate:.0f}" + (f" ({', '.join(notes)})" if notes else ""))
        log(f"  round {r + 1}/{rounds} (instances/s, in sending order): " + ", ".join(line))
        shutil.rmtree(folder)
    return rates, foreign


def fmt_mib(kib: int | None) -> str:
    return "     -" if not kib else f"{kib / 1024:6.1f}"


def memory(servers: list[Server], work: Path, rss_n: int, big_mb: int, timeout: float) -> dict:
    folder = work / "rss-study"
    t0 = time.perf_counter()
    make_big_ct_study(folder, rss_n, "RSS")
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    huge = work / "huge.dcm"
    make_huge_instance(huge, big_mb)
    huge_mb = huge.stat().st_size / 1e6
    log(
        f"  made {rss_n} instances ({size_mb:.0f} MB, {size_mb / rss_n:.2f} MB each) and one of {huge_mb:.0f} MB "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    marks = sorted({m for m in (1, 100, 500, 1000, rss_n) if m <= rss_n})
    result: dict = {"study_mb": size_mb, "huge_mb": huge_mb, "servers": {}}
    for s in servers:
        assert s.proc is not None
        pid = listener_pid(s.proc.pid, s.dicom_port)
        study = send_watching_rss(s, pid, folder, marks, timeout)
        big = send_watching_rss(s, pid, huge, [1], timeout)
        result["servers"][s.name] = {"pid": pid, "study": study, "huge": big}
        st = study["start"].get("VmRSS", 0)
        cols = "  ".join(f"{m:>5}: {fmt_mib(study['at'].get(m, {}).get('VmRSS'))}" for m in marks)
        log(
            f"  {s.name:8s} pid {pid}: RSS MiB at start {fmt_mib(st)}  after {cols}   "
            f"sampled peak {fmt_mib(study['sampled_max_kib'])} (+{(study['sampled_max_kib'] - st) / 1024:.1f})"
            f"   {rss_n / study['seconds']:.0f} inst/s, {size_mb / study['seconds']:.0f} MB/s"
        )
        bs = big["start"].get("VmRSS", 0)
        log(
            f"  {s.name:8s} one {huge_mb:.0f} MB instance: RSS before {fmt_mib(bs)}  sampled peak "
            f"{fmt_mib(big['sampled_max_kib'])} (+{(big['sampled_max_kib'] - bs) / 1024:.1f})  after "
            f"{fmt_mib(big['end'].get('VmRSS'))}   VmHWM {fmt_mib(big['end'].get('VmHWM'))}   {big['seconds']:.1f} s"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="instances per throughput run (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--rss-n", type=int, default=1000, help="instances in the memory study (default 1000)")
    ap.add_argument("--big-mb", type=int, default=200, help="size of the single large instance (default 200)")
    ap.add_argument("--no-memory", action="store_true", help="skip part 2")
    ap.add_argument("--no-references", action="store_true", help="compare interop and Orthanc only")
    ap.add_argument(
        "--servers",
        default=",".join(ALL_SERVERS),
        help=f"comma-separated subset of {','.join(ALL_SERVERS)} (default: all)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.15,
        help="before each run wait (up to 30 s) until other processes use fewer cores than this, and repeat a "
        "run during which they used more (0: neither)",
    )
    ap.add_argument("--retries", type=int, default=3, help="repeats of a disturbed run (default 3)")
    ap.add_argument("--timeout", type=float, default=300, help="limit for one storescu run, seconds")
    ap.add_argument("--workdir", type=Path, help="parent for the temporary folder (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, storage)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)

    for tool in ("storescu", "storescp", "Orthanc"):
        system_tool(tool)  # exits with a hint when missing
    wanted = [x.strip() for x in a.servers.split(",") if x.strip()]
    if a.no_references:
        wanted = [w for w in wanted if w in ("interop", "orthanc")]
    if unknown := set(wanted) - set(ALL_SERVERS):
        sys.exit(f"unknown server(s): {', '.join(sorted(unknown))}")
    if "interop" in wanted and not (VENV_BIN / "interop").exists():
        sys.exit(f"{VENV_BIN / 'interop'} not found: run this with the project's venv python")

    info = machine()
    log("ingest benchmark: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=a.workdir))
    servers: list[Server] = []
    results: dict = {"machine": info, "args": {k: str(v) for k, v in vars(a).items()}}
    try:
        log(f"starting servers in {work}")
        starters: dict[str, Callable[[Path], Server]] = {
            "interop": start_interop,
            "orthanc": start_orthanc,
            "storescp": start_storescp,
            "pynetdicom-fsync": lambda w: start_bare(w, "fsync"),
            "pynetdicom-noop": lambda w: start_bare(w, "noop"),
        }
        for name in wanted:
            servers.append(starters[name](work))
            if name == "orthanc":
                results["machine"]["orthanc"] = servers[-1].extra.get("version", "?")

        log(
            f"\nthroughput: {a.rounds} rounds x {a.n} CT_small instances, one association each, "
            "TCP_NODELAY=1 storescu +sd"
        )
        rates, foreign = throughput(servers, work, a.n, a.rounds, a.timeout, a.settle, a.retries)
        med = {k: statistics.median(v) for k, v in rates.items()}
        for k, v in rates.items():
            log(f"  {k:16s} median {med[k]:6.1f} instances/s   (runs: {', '.join(f'{x:.1f}' for x in v)})")
        results["throughput"] = {"rates": rates, "median": med, "foreign_load_cores": foreign}
        worst = max(max(v) for v in foreign.values())
        log(
            f"  other processes on the machine used at most {worst:.2f} cores during a run"
            + ("  <-- results disturbed; rerun on a quiet machine" if worst >= max(0.25, a.settle) else "")
        )
        if "interop" in rates and "orthanc" in rates:
            paired = [o / r for o, r in zip(rates["interop"], rates["orthanc"], strict=True)]
            log(
                f"  ours/orthanc: {med['interop'] / med['orthanc']:.2f} (ratio of medians), "
                f"{statistics.median(paired):.2f} (median of per-round ratios)"
            )
            results["throughput"].update(
                ratio_of_medians=med["interop"] / med["orthanc"], median_paired_ratio=statistics.median(paired)
            )

        if not a.no_memory:
            log(
                f"\nmemory: one association with {a.rss_n} synthetic 512x512 CT instances, then one "
                f"{a.big_mb} MB instance (VmRSS from /proc/<pid>/status, sampled every 10 ms)"
            )
            compared = [s for s in servers if s.name in ("interop", "orthanc")]
            results["memory"] = memory(compared, work, a.rss_n, a.big_mb, a.timeout)
    finally:
        for s in reversed(servers):
            s.stop()
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
