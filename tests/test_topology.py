"""The scale-out topology of ``docker-compose.yml``, from Debian packages and pip instead of containers (Docker
can't run on these machines): PostgreSQL 15 and Redis (Debian), Orthanc 1.10 with the DICOMweb plugin and
``orthanc/autoroute.lua`` (Debian), ``interop serve`` with the Celery executor and two ``interop worker``
processes (pip), each a process of its own on loopback.

Twenty chest radiographs (RG1_UNCI with fresh UIDs, ``bench/job_latency.py``'s ``fresh_cxr``) go to Orthanc as
twenty studies; Orthanc auto-routes each stable study to the node, ``cxr_triage`` runs on the workers, and the
node writes each TID 1500 SR back to Orthanc by C-STORE. Both workers do work (the job attempts' ``worker``
names); a third of the way through, one is killed with SIGKILL (with its app processes) while it runs a job,
whose lease then runs out and which another worker runs again; the killed worker is started again, as compose's
restart policy would. Every study still ends with
exactly one succeeded job, one report and exactly one SR in Orthanc, and Orthanc routed each study to the node
once (our results never bounce back).

:class:`Topology` starts and drives the same processes for ``bench/pipeline_throughput.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pydicom
import pytest

from tests.conftest import ServerProc
from tests.peers import OrthancPeer, orthanc_binary
from tests.support import wait_for
from tests.test_pipeline import CXR_RULE

SR_MODALITY = "SR"
FINAL = ("succeeded", "failed", "dead", "cancelled")


def attempt_pid(worker: str | None) -> int | None:
    """The process id in a lease owner / attempt worker name (``celery@<host>:<pid>:<slot>``)."""
    if not worker:
        return None
    parts = worker.split(":")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


@dataclass
class Topology:
    """Orthanc + ``interop serve`` (Celery executor) + ``interop worker`` processes, on a PostgreSQL database
    and a Redis broker that the caller provides. Ports are free loopback ports; logs go under ``root``."""

    root: Path
    postgres_url: str
    redis_url: str
    #: Orthanc's StableAge (seconds without a new instance before auto-routing).
    stable_age: int = 2
    #: Job lease: a killed worker's job goes back to the queue this long after its last renewal.
    lease_seconds: float = 10.0
    extra_env: dict[str, str] = field(default_factory=dict)
    server: ServerProc = field(init=False)
    orthanc: OrthancPeer = field(init=False)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.server = ServerProc(data_dir=self.root / "node")
        self.orthanc = OrthancPeer(root=self.root / "orthanc", stable_age=self.stable_age, autoroute=True,
                                   node_port=self.server.dicom_port, binary=orthanc_binary())
        pacs = {"name": "pacs", "kind": "dicom", "ae_title": self.orthanc.aet, "host": "127.0.0.1",
                "port": self.orthanc.dicom_port, "calling_ae": "INTEROP"}
        # What docker-compose.yml sets for the server and the workers, less the object store (the workers
        # share the server's data directory here, as the compose volume lets them).
        self.server.extra_env = {
            "INTEROP_DATABASE_URL": self.postgres_url,
            "INTEROP_JOBS__EXECUTOR": "celery",
            "INTEROP_JOBS__BROKER_URL": self.redis_url,
            "INTEROP_JOBS__LEASE_SECONDS": str(self.lease_seconds),
            "INTEROP_JOBS__BACKOFF_SECONDS": "1",
            "INTEROP_ROUTING__RULES": json.dumps([CXR_RULE]),
            "INTEROP_WRITEBACK__DESTINATIONS": json.dumps([pacs]),
            **self.extra_env,
        }

    # -- processes ------------------------------------------------------------------------------------------

    def start(self, workers: int = 2) -> Topology:
        self.orthanc.start(timeout=60)
        self.server.start(timeout=120)
        for i in range(1, workers + 1):
            self.start_worker(f"w{i}")
        self.wait_workers_connected()
        return self

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        with open(self.root / f"worker-{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "interop", "worker", "--hostname", f"{name}@%h"],
                                    env=self.server.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.workers[name] = proc
        return proc

    def wait_workers_connected(self, timeout: float = 90) -> None:
        """Until every live worker answers a Celery ping through the broker."""
        from interop.config import JobSettings
        from interop.jobs.celery_app import make_celery

        control = make_celery(JobSettings(executor="celery", broker_url=self.redis_url)).control
        alive = {n for n, p in self.workers.items() if p.poll() is None}

        def answered() -> bool:
            for name, p in self.workers.items():
                if p.poll() is not None and name in alive:
                    raise AssertionError(f"worker {name} exited with {p.returncode}:\n{self.worker_log(name)}")
            replies = control.ping(timeout=1.0) or []
            names = {k.split("@", 1)[0] for r in replies for k in r}
            return alive <= names

        wait_for(answered, timeout, f"workers {sorted(alive)} to answer a Celery ping", every=0.5)

    def worker_name(self, pid: int | None) -> str | None:
        return next((n for n, p in self.workers.items() if p.pid == pid), None)

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker and every process it started (its app processes run in sessions of their own)."""
        proc = self.workers[name]
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(proc.pid)
            family = [*parent.children(recursive=True), parent]
            for p in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def worker_log(self, name: str) -> str:
        path = self.root / f"worker-{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.server.stop()
        self.orthanc.stop(graceful=False)

    # -- inputs ---------------------------------------------------------------------------------------------

    def make_studies(self, n: int, start: int = 0) -> list[Path]:
        """``n`` chest radiographs, each a new study (RG1_UNCI with fresh UIDs)."""
        from bench.job_latency import fresh_cxr

        folder = self.root / "studies"
        folder.mkdir(exist_ok=True)
        return [f for i in range(start, start + n) for f in fresh_cxr(folder, i)]

    def storescu(self, port: int, files: list[Path], called: str) -> None:
        """One association from AE MODALITY carrying ``files`` (dcmtk's storescu, TCP_NODELAY)."""
        exe = next(p for p in ("/usr/bin/storescu", "/usr/local/bin/storescu") if os.access(p, os.X_OK))
        subprocess.run([exe, "-aet", "MODALITY", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                       check=True, capture_output=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"})

    def send_to_orthanc(self, files: list[Path]) -> None:
        self.storescu(self.orthanc.dicom_port, files, self.orthanc.aet)

    def send_to_node(self, files: list[Path]) -> None:
        self.storescu(self.server.dicom_port, files, "INTEROP")

    # -- reading the node -----------------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        return self.server.client()

    def jobs(self, http: httpx.Client) -> list[dict[str, Any]]:
        return list(http.get("/api/jobs", params={"app": "cxr_triage", "limit": 1000}).json())

    def sr_writebacks(self, http: httpx.Client) -> list[dict[str, Any]]:
        rows = http.get("/api/writebacks", params={"destination": "pacs", "limit": 1000}).json()
        return [r for r in rows if r["kind"] == "sr"]

    def wait_done(self, http: httpx.Client, n: int, timeout: float) -> list[dict[str, Any]]:
        """The ``n`` jobs once every one has ended and its SR has reached Orthanc (or is dead)."""

        def done() -> list[dict[str, Any]] | None:
            jobs = self.jobs(http)
            if len(jobs) < n or any(j["state"] not in FINAL for j in jobs):
                return None
            srs = self.sr_writebacks(http)
            ok = sum(1 for j in jobs if j["state"] == "succeeded")
            if len(srs) < ok or any(r["state"] not in ("sent", "dead") for r in srs):
                return None
            return jobs

        return wait_for(done, timeout, f"{n} jobs finished with their SRs in Orthanc", every=1.0)  # type: ignore[no-any-return]

    def orthanc_sr_count(self, study_uid: str) -> int:
        """SR instances in the study in Orthanc."""
        series = self.orthanc.rest("POST", "/tools/find", json={
            "Level": "Series", "Expand": True, "Query": {"StudyInstanceUID": study_uid}})
        return sum(len(s["Instances"]) for s in series if s["MainDicomTags"].get("Modality") == SR_MODALITY)


@pytest.fixture
def topology(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Topology]:
    if orthanc_binary() is None:
        pytest.skip("Orthanc is not installed (tests/run.sh: apt-get install orthanc orthanc-dicomweb)")
    for tool in ("storescu",):
        if not any(os.access(f"{d}/{tool}", os.X_OK) for d in ("/usr/bin", "/usr/local/bin")):
            pytest.skip(f"dcmtk's {tool} is not installed (tests/run.sh: apt-get install dcmtk)")
    # Follow-up recommendations (an embedding model in the server, ~2-4 s of CPU per report here) are not what
    # this test is about: off, they leave the two cores to the workers and the write-back path. The report is
    # still made; bench/pipeline_throughput.py keeps them on.
    topo = Topology(root=tmp_path / "topology", postgres_url=postgres_url, redis_url=redis_url,
                    extra_env={"INTEROP_REPORTS__RECOMMENDATIONS": "false"})
    try:
        yield topo
    finally:
        topo.stop()


#: The issue's twenty; fewer with INTEROP_TOPOLOGY_STUDIES on a machine busy with other work (at least 4: both
#: workers finish one, one is killed running another, the rest finish on the others).
STUDIES = max(4, int(os.environ.get("INTEROP_TOPOLOGY_STUDIES", "20")))
#: Seconds from the first process started to the last SR in Orthanc (~3 minutes on a quiet 2-core machine).
BUDGET = 360


@pytest.mark.timeout(BUDGET + 60)
def test_twenty_studies_over_two_workers_one_killed_each_gets_one_result(topology: Topology) -> None:
    t0 = time.monotonic()
    topo = topology.start(workers=2)
    t_up = time.monotonic()
    files = topo.make_studies(STUDIES)
    topo.send_to_orthanc(files)
    t_sent = time.monotonic()

    with topo.client() as http:
        finished: dict[int, dict[str, Any]] = {}

        def attempts_by_worker() -> dict[str, int]:
            """Succeeded attempts per worker name so far (finished jobs are read once)."""
            for j in topo.jobs(http):
                if j["state"] in FINAL and j["id"] not in finished:
                    finished[j["id"]] = http.get(f"/api/jobs/{j['id']}").json()
            counts: dict[str, int] = {}
            for job in finished.values():
                for a in job["attempt_history"]:
                    name = topo.worker_name(attempt_pid(a["worker"]))
                    if a["outcome"] == "succeeded" and name:
                        counts[name] = counts.get(name, 0) + 1
            return counts

        # Once both workers have finished jobs and a third of the studies are done, kill one while it runs the
        # next.
        def victim() -> tuple[str, dict[str, Any]] | None:
            counts = attempts_by_worker()
            if len(counts) < 2 or sum(counts.values()) < STUDIES // 3:
                return None
            for j in topo.jobs(http):
                name = topo.worker_name(attempt_pid(j["lease_owner"]))
                if j["state"] == "running" and name:
                    return name, j
            return None

        name, running = wait_for(victim, BUDGET - (time.monotonic() - t0),
                                 "both workers to finish a job and one to be running another", every=0.5)
        topo.kill_worker(name)
        t_kill = time.monotonic()
        survivor = next(n for n in topo.workers if n != name)
        # docker-compose.yml's `restart: unless-stopped` brings a killed worker back: so do we (a new process,
        # which must not disturb what the dead one left behind).
        restarted = f"{name}-restarted"
        topo.start_worker(restarted)

        jobs = topo.wait_done(http, STUDIES, timeout=BUDGET - (time.monotonic() - t0))
        t_done = time.monotonic()

        # -- every study: exactly one job, succeeded --
        study_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
        assert len(study_uids) == STUDIES
        by_study: dict[str, list[dict[str, Any]]] = {}
        for j in jobs:
            by_study.setdefault(j["study_uid"], []).append(j)
        assert set(by_study) == study_uids, "a job per study sent, and no other"
        assert all(len(js) == 1 for js in by_study.values()), {u: [j["id"] for j in js] for u, js in by_study.items()}
        assert [j for j in jobs if j["state"] != "succeeded"] == []

        # -- both workers did work; the job the victim was running (or, had it just finished that one, the next
        # it had taken) was lost with it, went back to the queue when its lease ran out, and succeeded elsewhere --
        counts = attempts_by_worker()
        assert {name, survivor} <= set(counts) <= {name, survivor, restarted}, counts
        assert sum(counts.values()) == STUDIES, counts
        histories = {j["id"]: [(a["outcome"], topo.worker_name(attempt_pid(a["worker"])))
                               for a in finished[j["id"]]["attempt_history"]] for j in jobs}
        lost = {i: h for i, h in histories.items() if any(o == "lost" for o, _ in h)}
        assert lost, f"no attempt was lost when {name} was killed running job {running['id']}: {histories}"
        for h in lost.values():
            assert all(a == ("lost", name) for a in h[:-1]), h
            assert h[-1] in (("succeeded", survivor), ("succeeded", restarted)), h

        # -- one report per study, one SR per study in Orthanc, nothing routed back --
        for uid in study_uids:
            reports = http.get("/api/reports", params={"study_uid": uid}).json()
            assert len(reports) == 1, (uid, reports)
        srs = topo.sr_writebacks(http)
        assert len(srs) == STUDIES and all(r["state"] == "sent" for r in srs), srs
        sr_counts = {uid: topo.orthanc_sr_count(uid) for uid in study_uids}
        assert set(sr_counts.values()) == {1}, sr_counts
        routed = topo.orthanc.jobs("DicomModalityStore")
        assert len(routed) == STUDIES and all(j["State"] == "Success" for j in routed), routed

    print(f"\ntopology: up {t_up - t0:.1f} s, {STUDIES} studies sent to Orthanc in {t_sent - t_up:.1f} s, "
          f"{name} killed at +{t_kill - t_sent:.1f} s, all SRs in Orthanc at +{t_done - t_sent:.1f} s; "
          f"succeeded attempts {counts}; total {time.monotonic() - t0:.1f} s")
