"""Model versions with real child-process runs of the probe app: the active version per app and rule, shadow
jobs beside clinical ones (no report, lowest priority, preempted for clinical work), their comparison and
agreement rate, and drift from stored results against a bundle's reference."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from interop.config import ModelSettings
from interop.errors import Conflict, NotFound
from interop.jobs.registry import AppRegistry
from interop.mlops.catalog import install
from interop.mlops.drift import DriftMonitor
from interop.mlops.registry import ModelRegistry
from interop.mlops.shadow import ShadowMonitor
from interop.reports.models import Report
from interop.routing.decide import Decision
from operators.drift_reference import build_reference, write_reference
from tests.jobs.conftest import PROBE_APPS, Jobs, make_jobs, probe_bundle


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    j = make_jobs(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    # Versions besides the app's own bundle (1.0): 2.0 agrees with it (p 0.95 vs 1.0), 3.0 does not (p 0.2).
    root = tmp_path / "models"
    install(root, "probe", probe_bundle(tmp_path / "v2", version="2.0", probability=0.95))
    install(root, "probe", probe_bundle(tmp_path / "v3", version="3.0", probability=0.2))
    j.registry = AppRegistry([PROBE_APPS], {"probe": tmp_path / "bundle"}, models_root=root)
    j.router.registry = j.registry
    yield j
    j.db.dispose()


def decision(sops: list[str], rule: str = "t") -> Decision:
    return Decision(rule=rule, app="probe", priority="routine", trigger="study", series_uids=("s",),
                    sop_instance_uids=tuple(sops))


def reports(jobs: Jobs) -> dict[int, int]:
    with jobs.db.reading() as s:
        return dict(s.execute(select(Report.job_id, func.count()).group_by(Report.job_id)).all())


def test_catalog_finds_versions_and_install_refuses_a_second_copy(jobs: Jobs, tmp_path: Path) -> None:
    versions = jobs.registry.versions("probe")
    assert sorted(versions) == ["1.0", "2.0", "3.0"]
    assert versions["1.0"].source == "app" and versions["2.0"].source == "installed"
    assert jobs.registry.model_path("probe", "2.0") == tmp_path / "models" / "probe" / "2.0"
    with pytest.raises(Conflict):
        install(tmp_path / "models", "probe", probe_bundle(tmp_path / "again", version="2.0"))
    with pytest.raises(Conflict, match="give the new bundle a version of its own"):  # 1.0 is the app's own
        install(tmp_path / "models", "probe", probe_bundle(tmp_path / "v1b", version="1.0"), versions)
    with pytest.raises(NotFound, match="9.9 is not installed"):
        jobs.registry.model_path("probe", "9.9")
    config_entry = AppRegistry([PROBE_APPS], {"probe": tmp_path / "bundle"},
                               installed=[("probe", probe_bundle(tmp_path / "v4", version="4.0"))])
    assert sorted(config_entry.versions("probe")) == ["1.0", "4.0"]


def test_shadow_run_beside_the_clinical_one(jobs: Jobs) -> None:
    models = ModelRegistry(jobs.db, jobs.registry)
    jobs.router.models = models
    with pytest.raises(NotFound):
        models.assign("probe", "shadow", "9.9")
    models.assign("probe", "shadow", "2.0", by="test")
    assert models.resolve("probe", "t") == ("1.0", "2.0")

    sops = [jobs.ingest("CT_small.dcm")]
    got = jobs.router.enqueue(decision(sops), study_uid=None, patient_id=None, patient_ref=None,
                              triggered_at=jobs.new_job().triggered_at)
    assert got is not None and got[1]
    listed = jobs.queue.search()
    assert [(j["model_version"], j["shadow"], j["priority"]) for j in listed] == [
        ("1.0", False, "routine"), ("2.0", True, "shadow")]
    clinical, shadow = listed
    assert shadow["shadow_of"] == clinical["id"] and shadow["idempotency_key"] != clinical["idempotency_key"]
    # Asking again queues nothing new, shadow included.
    jobs.router.enqueue(decision(sops), study_uid=None, patient_id=None, patient_ref=None,
                        triggered_at=jobs.new_job().triggered_at)
    assert len(jobs.queue.search()) == 2

    # A clinical job queued later still runs before the shadow one.
    later = [jobs.ingest("MR_small.dcm")]
    models.assign("probe", "shadow", None)
    jobs.router.enqueue(decision(later), study_uid=None, patient_id=None, patient_ref=None,
                        triggered_at=jobs.new_job().triggered_at)
    w = jobs.worker()
    order = []
    while w.run_next():
        order.append(max(jobs.queue.search(state="succeeded"), key=lambda j: j["finished_at"])["id"])
    assert order == [clinical["id"], clinical["id"] + 2, shadow["id"]]

    done = {j["id"]: j for j in jobs.queue.search()}
    assert done[shadow["id"]]["state"] == "succeeded"
    assert jobs.queue.get(shadow["id"])["result"]["model"]["version"] == "2.0"
    assert shadow["id"] not in reports(jobs) and clinical["id"] in reports(jobs)  # never a report of its own

    monitor = ShadowMonitor(jobs.db, jobs.blobs, ModelSettings())
    assert monitor.compare_due() == 1 and monitor.compare_due() == 0
    (c,) = models.comparisons("probe")
    assert c["agree"] is True and c["kind"] == "findings" and c["score"] == pytest.approx(0.05)
    assert models.agreement("probe") == [{"app": "probe", "active_version": "1.0", "shadow_version": "2.0",
                                          "compared": 1, "agreed": 1, "incomplete": 0, "agreement_rate": 1.0}]

    # Version 3.0 in shadow disagrees (p 0.2: the finding is no longer called).
    models.assign("probe", "shadow", "3.0")
    third = [jobs.ingest("SC_rgb.dcm")]
    jobs.router.enqueue(decision(third), study_uid=None, patient_id=None, patient_ref=None,
                        triggered_at=jobs.new_job().triggered_at)
    while w.run_next():
        pass
    assert monitor.compare_due() == 1
    rates = {a["shadow_version"]: a["agreement_rate"] for a in models.agreement("probe")}
    assert rates == {"2.0": 1.0, "3.0": 0.0}
    described = models.describe("probe")
    assert described["active_version"] == "1.0" and described["shadow_version"] == "3.0"
    assert {v["version"] for v in described["versions"]} == {"1.0", "2.0", "3.0"}


def test_active_version_per_rule_runs_that_bundle(jobs: Jobs) -> None:
    models = ModelRegistry(jobs.db, jobs.registry)
    jobs.router.models = models
    models.assign("probe", "active", "2.0", rule="chest", by="test")
    assert models.resolve("probe", "chest") == ("2.0", None)
    assert models.resolve("probe", "other") == ("1.0", None)
    sops = [jobs.ingest("CT_small.dcm")]
    for rule in ("chest", "other"):
        jobs.router.enqueue(decision(sops, rule), study_uid=None, patient_id=None, patient_ref=None,
                            triggered_at=jobs.new_job().triggered_at)
    w = jobs.worker()
    while w.run_next():
        pass
    ran = {j["rule"]: jobs.queue.get(j["id"])["result"]["model"]["version"] for j in jobs.queue.search()}
    assert ran == {"chest": "2.0", "other": "1.0"}
    models.assign("probe", "active", None, rule="chest")
    assert models.resolve("probe", "chest") == ("1.0", None)


def test_a_job_of_a_version_no_longer_installed_fails_saying_so(jobs: Jobs) -> None:
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=[jobs.ingest()], max_attempts=1))
    with jobs.db.writing() as s:
        from interop.jobs.models import Job

        s.get(Job, job_id).model_version = "7.7"  # type: ignore[union-attr]
    jobs.worker().run_next()
    job = jobs.queue.get(job_id)
    assert job["state"] == "failed" and "probe model version 7.7 is not installed" in job["error"]


def test_a_running_shadow_job_makes_way_for_clinical_work(jobs: Jobs, tmp_path: Path) -> None:
    install(tmp_path / "models", "probe", probe_bundle(tmp_path / "slow", "sleep:30", version="5.0"))
    models = ModelRegistry(jobs.db, jobs.registry)
    jobs.router.models = models
    models.assign("probe", "shadow", "5.0")
    jobs.router.enqueue(decision([jobs.ingest("CT_small.dcm")]), study_uid=None, patient_id=None,
                        patient_ref=None, triggered_at=jobs.new_job().triggered_at)
    w = jobs.worker()
    assert w.run_next()  # the clinical job
    shadow_id = next(j["id"] for j in jobs.queue.search() if j["shadow"])
    w.renew_interval = 0.2
    t = threading.Thread(target=w.run_next)
    t0 = time.monotonic()
    t.start()
    while jobs.queue.get(shadow_id)["state"] != "running":
        time.sleep(0.05)
    models.assign("probe", "shadow", None)
    clinical_id, _ = jobs.queue.enqueue(jobs.new_job(key="urgent", sops=[jobs.ingest("MR_small.dcm")]))
    t.join(timeout=20)
    assert not t.is_alive() and time.monotonic() - t0 < 15
    shadow = jobs.queue.get(shadow_id)
    assert shadow["state"] == "queued" and shadow["max_attempts"] == 4  # preemption costs no retry
    assert shadow["attempt_history"][-1]["outcome"] == "preempted"
    assert w.run_next() and jobs.queue.get(clinical_id)["state"] == "succeeded"


def test_drift_from_stored_results_against_the_bundle_reference(jobs: Jobs, tmp_path: Path) -> None:
    # The reference says one input file per case and a probability of 1.0; live cases have 1 and 2 files.
    write_reference(tmp_path / "bundle", build_reference({"input_files": [1.0] * 50}, {"anything": [1.0] * 50},
                                                         source="test"))
    for i, name in enumerate(["CT_small.dcm", "MR_small.dcm"]):
        sops = [jobs.ingest(name)] + ([jobs.ingest("SC_rgb.dcm")] if i else [])
        jobs.queue.enqueue(jobs.new_job(key=f"d{i}", sops=sops))
    w = jobs.worker()
    while w.run_next():
        pass
    drift = DriftMonitor(jobs.db, jobs.registry, ModelSettings(drift_min_cases=2))
    rows = {(r["kind"], r["feature"]): r for r in drift.rows("probe")}
    assert rows[("output", "anything")]["psi"] == pytest.approx(0.0)
    assert rows[("input", "input_files")]["n"] == 2 and rows[("input", "input_files")]["psi"] > 1.0
    assert rows[("input", "input_files")]["live_mean"] == 1.5
    assert drift.gauge("input") == [(("probe", "1.0", "input_files"), rows[("input", "input_files")]["psi"])]
    assert json.loads((tmp_path / "bundle" / "configs" / "drift_reference.json").read_text())["source"] == "test"
