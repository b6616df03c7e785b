"""The Celery executor with real peers: Redis as the broker, PostgreSQL as the store, two ``interop worker``
processes. One worker is killed (SIGKILL, with its app process) in the middle of a job: the job finishes on
the other, once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from pydicom.data import get_testdata_file

from tests.conftest import ServerProc
from tests.jobs.conftest import PROBE_APPS, probe_bundle
from tests.support import require_tool, wait_for


def _start_worker(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "interop", "worker", "--hostname", f"{name}@%h"], env=env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def test_worker_killed_mid_job_job_finishes_on_the_other(server_factory, postgres_url: str, redis_url: str,
                                                         tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    markers = tmp_path / "markers"
    markers.mkdir()
    bundle = probe_bundle(tmp_path / "bundle", "sleep:6", marker_dir=markers)
    extra = {
        "INTEROP_DATABASE_URL": postgres_url,
        "INTEROP_JOBS__EXECUTOR": "celery",
        "INTEROP_JOBS__BROKER_URL": redis_url,
        "INTEROP_JOBS__APPS_DIRS": json.dumps([str(PROBE_APPS)]),
        "INTEROP_JOBS__MODELS": json.dumps({"probe": str(bundle)}),
        "INTEROP_JOBS__LEASE_SECONDS": "3",
        "INTEROP_JOBS__PREWARM": "false",
        "INTEROP_ROUTING__RULES": json.dumps([{"name": "ct", "app": "probe", "study": {"modalities": ["CT"]}}]),
    }
    srv: ServerProc = server_factory(extra)
    workers = {name: _start_worker(srv.env, name, tmp_path / f"{name}.log") for name in ("w1", "w2")}
    try:
        time.sleep(3)  # both workers connected to the broker
        subprocess.run([storescu, "127.0.0.1", str(srv.dicom_port), "-aec", "INTEROP",
                        str(get_testdata_file("CT_small.dcm"))], check=True, capture_output=True,
                       env={**os.environ, "TCP_NODELAY": "1"})
        with srv.client() as http:
            def running() -> dict | None:  # type: ignore[type-arg]
                jobs = http.get("/api/jobs").json()
                return jobs[0] if jobs and jobs[0]["state"] == "running" and list(markers.iterdir()) else None

            job = wait_for(running, 60, "the job to start on a worker")
            owner_pid = int(job["lease_owner"].split(":")[1])
            victim = next(n for n, p in workers.items() if p.pid == owner_pid)
            proc = psutil.Process(owner_pid)
            family = [proc, *proc.children(recursive=True)]
            # The app runs in its own session; find it by its marker (its pid) too.
            app_pids = [int(m.name.split("-")[1]) for m in markers.iterdir()]
            for p in family:
                p.send_signal(signal.SIGKILL)
            for pid in app_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            workers[victim].wait(timeout=10)

            def finished() -> dict | None:  # type: ignore[type-arg]
                j = http.get(f"/api/jobs/{job['id']}").json()
                return j if j["state"] in ("succeeded", "failed", "dead") else None

            done = wait_for(finished, 90, "the job to finish on the surviving worker")
            assert done["state"] == "succeeded", done
            history = done["attempt_history"]
            assert [a["outcome"] for a in history] == ["lost", "succeeded"], history
            survivor_pid = workers[next(n for n in workers if n != victim)].pid
            assert history[1]["worker"].split(":")[1] == str(survivor_pid)
            assert done["result"]["model"]["name"] == "probe-model"
            assert len(http.get("/api/jobs").json()) == 1
            assert len(list(markers.iterdir())) == 2  # started twice, finished once
    finally:
        for p in workers.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
