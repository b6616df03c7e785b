"""The jobs API of a running server: apps, routing rules (config + API), jobs, failures with reasons,
cancel and retry, recovery after a crash (SIGKILL) mid-job."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file

from tests.conftest import ServerProc
from tests.jobs.conftest import PROBE_APPS, probe_bundle
from tests.support import require_tool
from tests.test_pipeline import wait_job

CT_RULE = {"name": "ct", "app": "probe", "study": {"modalities": ["CT"]}}


def probe_env(bundle: Path, rules: list[dict[str, Any]] | None = None, **extra: str) -> dict[str, str]:
    return {"INTEROP_JOBS__APPS_DIRS": json.dumps([str(PROBE_APPS)]),
            "INTEROP_JOBS__MODELS": json.dumps({"probe": str(bundle)}),
            "INTEROP_JOBS__PREWARM": "false", "INTEROP_JOBS__BACKOFF_SECONDS": "0.5",
            "INTEROP_ROUTING__RULES": json.dumps(rules if rules is not None else [CT_RULE]), **extra}


def store(srv: ServerProc, *names: str) -> None:
    storescu = require_tool("storescu")
    subprocess.run([storescu, "127.0.0.1", str(srv.dicom_port), "-aec", "INTEROP",
                    *[str(get_testdata_file(n)) for n in names]], check=True, capture_output=True,
                   env={**os.environ, "TCP_NODELAY": "1"})


def test_rules_from_config_and_api(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(probe_env(probe_bundle(tmp_path / "b")))
    with srv.client() as http:
        assert [(r["name"], r["source"]) for r in http.get("/api/routing/rules").json()] == [("ct", "config")]
        assert "probe" in {a["name"] for a in http.get("/api/apps").json()}
        mr = {"name": "mr", "app": "probe", "priority": "stat", "study": {"modalities": ["MR"]}}
        assert http.put("/api/routing/rules/mr", json=mr).status_code == 201
        assert http.put("/api/routing/rules/mr", json=mr).status_code == 200
        bad = http.put("/api/routing/rules/x", json={**mr, "name": "x", "app": "nope"})
        assert bad.status_code == 400 and "unknown app" in bad.text
        assert http.put("/api/routing/rules/y", json={"name": "y", "app": "probe"}).status_code in (400, 422)
        assert http.delete("/api/routing/rules/mr").status_code == 204
        assert http.get("/api/routing/rules/mr").status_code == 404
    with srv.client("system/Task.rs") as reader:
        assert reader.get("/api/routing/rules").status_code == 200
        denied = reader.put("/api/routing/rules/mr", json=mr)
        assert denied.status_code == 403 and denied.json()["resourceType"] == "OperationOutcome"


def test_study_sent_twice_runs_the_app_once(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(probe_env(probe_bundle(tmp_path / "b")))
    store(srv, "CT_small.dcm")
    with srv.client() as http:
        job = wait_job(http, app="probe")
        assert job["state"] == "succeeded", job
        store(srv, "CT_small.dcm")  # the same instance again: the study re-opens and becomes ready again
        time.sleep(3.5)
        assert len(http.get("/api/jobs").json()) == 1


def test_failing_app_fails_with_reason_and_does_not_block_others(server_factory: Any, tmp_path: Path) -> None:
    # The CT rule runs an app whose model bundle path is wrong; an MR rule runs a working copy of it.
    good = tmp_path / "apps2"
    shutil.copytree(PROBE_APPS / "probe", good / "probe_ok", ignore=shutil.ignore_patterns("__pycache__"))
    manifest = (good / "probe_ok" / "app.yaml").read_text().replace("module: probe", "module: probe_ok")
    manifest = manifest.replace("model: model", f"model: {probe_bundle(tmp_path / 'ok')}")
    (good / "probe_ok" / "app.yaml").write_text(manifest)
    rules = [CT_RULE, {"name": "mr", "app": "probe_ok", "study": {"modalities": ["MR"]}}]
    env = probe_env(tmp_path / "missing-bundle", rules, INTEROP_JOBS__MAX_ATTEMPTS="2")
    env["INTEROP_JOBS__APPS_DIRS"] = json.dumps([str(PROBE_APPS), str(good)])
    srv = server_factory(env)
    store(srv, "CT_small.dcm", "MR_small.dcm")
    with srv.client() as http:
        bad = wait_job(http, app="probe")
        ok = wait_job(http, app="probe_ok")
        assert ok["state"] == "succeeded"
        assert bad["state"] == "failed"
        assert bad["model_version"] == "unavailable"
        assert [a["outcome"] for a in bad["attempt_history"]] == ["error", "error"]
        assert "missing-bundle" in bad["error"]
        # Retry through the API: queued again with a fresh set of attempts (it fails again, the history grows).
        r = http.post(f"/api/jobs/{bad['id']}/retry")
        assert r.status_code == 200 and r.json()["state"] in ("queued", "running", "retrying")


def test_crash_mid_job_reruns_it_once_after_restart(server_factory: Any, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    srv = server_factory(probe_env(probe_bundle(tmp_path / "b", "sleep:4", marker_dir=markers)))
    store(srv, "CT_small.dcm")
    with srv.client() as http:
        deadline = time.monotonic() + 60
        while not list(markers.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http.get("/api/jobs").json()[0]["state"] == "running"
    srv.kill()
    for m in markers.iterdir():  # the app child is in its own session: a crashed host takes it too
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(m.name.split("-")[1]), 9)
    srv.start()
    with srv.client() as http:
        job = wait_job(http, app="probe")
        assert job["state"] == "succeeded"
        assert [a["outcome"] for a in job["attempt_history"]] == ["lost", "succeeded"]
        assert "restarted" in job["attempt_history"][0]["reason"]
        assert len(list(markers.iterdir())) == 2
        assert not list((srv.data_dir / "work").iterdir())  # the killed run's scratch folder was removed


def test_cancel_a_running_job(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(probe_env(probe_bundle(tmp_path / "b", "sleep:30")))
    store(srv, "CT_small.dcm")
    with srv.client() as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = http.get("/api/jobs").json()
            if jobs and jobs[0]["state"] == "running":
                break
            time.sleep(0.2)
        r = http.post(f"/api/jobs/{jobs[0]['id']}/cancel")
        assert r.status_code == 202
        job = wait_job(http, app="probe", timeout=30)
        assert job["state"] == "cancelled"
        assert http.post(f"/api/jobs/{job['id']}/cancel").status_code == 409


def test_routing_preview_is_a_dry_run(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(probe_env(probe_bundle(tmp_path / "b"), rules=[]))
    store(srv, "CT_small.dcm")
    import pydicom

    study_uid = str(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID)
    with srv.client() as http:
        time.sleep(2)
        assert http.post("/api/routing/preview", json={"study_uid": study_uid}).json()["matches"] == []
        trial = [CT_RULE, {"name": "mr", "app": "probe", "study": {"modalities": ["MR"]}}]
        got = http.post("/api/routing/preview", json={"study_uid": study_uid, "rules": trial}).json()
        assert [(m["rule"], m["app"], m["instances"]) for m in got["matches"]] == [("ct", "probe", 1)]
        assert got["series"][0]["modality"] == "CT"
        assert http.get("/api/jobs").json() == []  # nothing was queued
        assert http.post("/api/routing/preview", json={"study_uid": "1.2.3"}).status_code == 404
