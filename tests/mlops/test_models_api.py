"""The models API, CLI and metrics on a running server (interop serve) with the probe app: a version installed
with the CLI, put in shadow through the API (an administrator's scope), a study runs both, one report, the
agreement in /api/models, /metrics and `interop models list`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.api.test_jobs_api import probe_env, store
from tests.jobs.conftest import probe_bundle


def cli(srv: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interop.cli", *args], env=srv.env, capture_output=True, text=True,
                          timeout=120)


def test_shadow_version_through_the_api(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(probe_env(probe_bundle(tmp_path / "v1")), start=False)
    installed = cli(srv, "models", "install", "probe", str(probe_bundle(tmp_path / "v2", version="2.0",
                                                                       probability=0.95)))
    assert installed.returncode == 0, installed.stderr
    assert (srv.data_dir / "models" / "probe" / "2.0" / "configs" / "metadata.json").is_file()
    srv.start()
    with srv.client() as admin, srv.client("system/Task.rs") as reader:
        (probe,) = [m for m in reader.get("/api/models").json() if m["app"] == "probe"]
        assert probe["active_version"] == probe["default_version"] == "1.0" and probe["shadow_version"] is None
        assert [(v["version"], v["source"]) for v in probe["versions"]] == [("1.0", "app"), ("2.0", "installed")]
        denied = reader.put("/api/models/probe/shadow", json={"version": "2.0"})
        assert denied.status_code == 403 and denied.json()["resourceType"] == "OperationOutcome"
        assert admin.put("/api/models/probe/shadow", json={"version": "9.9"}).status_code == 404
        assert admin.put("/api/models/probe/shadow", json={"version": "2.0", "rule": "nope"}).status_code == 404
        put = admin.put("/api/models/probe/shadow", json={"version": "2.0"})
        assert put.status_code == 200 and put.json()["shadow_version"] == "2.0"
        assert put.json()["assignments"][0]["changed_by"] == "admin"

        store(srv, "CT_small.dcm")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            model = admin.get("/api/models/probe").json()
            if model["shadow_agreement"]:
                break
            time.sleep(0.5)
        assert model["shadow_agreement"] == [{"app": "probe", "active_version": "1.0", "shadow_version": "2.0",
                                              "compared": 1, "agreed": 1, "incomplete": 0, "agreement_rate": 1.0}]
        (comparison,) = model["recent_comparisons"]
        jobs = {j["id"]: j for j in admin.get("/api/jobs").json()}
        shadow, clinical = jobs[comparison["shadow_job_id"]], jobs[comparison["active_job_id"]]
        assert shadow["shadow"] and shadow["priority"] == "shadow" and shadow["model_version"] == "2.0"
        assert not clinical["shadow"] and clinical["model_version"] == "1.0"
        reports = admin.get("/api/reports").json()
        assert [r["job_id"] for r in reports] == [clinical["id"]]  # the shadow run is never a report
        assert not [w for w in admin.get("/api/writebacks").json() if w["job_id"] == shadow["id"]]

        from prometheus_client.parser import text_string_to_metric_families

        samples = {(m.name, tuple(sorted(x.labels.items()))): x.value
                   for m in text_string_to_metric_families(admin.get("/metrics").text) for x in m.samples}
        labels = (("active_version", "1.0"), ("app", "probe"), ("shadow_version", "2.0"))
        assert samples[("interop_model_shadow_agreement", labels)] == 1.0
        assert samples[("interop_model_shadow_comparisons", tuple(sorted((*labels, ("outcome", "agree")))))] == 1.0
        assert samples[("interop_model_shadow_comparisons", tuple(sorted((*labels, ("outcome", "disagree")))))] == 0

    listed = cli(srv, "models", "list", "probe")
    assert listed.returncode == 0, listed.stderr
    assert "probe: active 1.0, shadow 2.0" in listed.stdout
    assert "shadow 2.0 beside 1.0: 1/1 agree (100.0%), 0 incomplete" in listed.stdout
    off = cli(srv, "models", "shadow", "probe", "--clear")
    assert off.returncode == 0 and "shadow model for every rule is now none" in off.stderr
    assert "probe: active 1.0, shadow -" in cli(srv, "models", "list", "probe").stdout
    assert cli(srv, "models", "activate", "probe", "3.0").returncode == 1
