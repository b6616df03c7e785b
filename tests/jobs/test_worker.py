"""Running jobs (interop.jobs.worker) with the probe app in real child processes: input laid out from the
store, result and arrays stored, failures with their reasons, timeouts, cancel, lost leases."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from interop.jobs.worker import failure_reason
from tests.jobs.conftest import Jobs, probe_bundle


def test_run_next_stores_result_and_arrays(jobs: Jobs) -> None:
    sops = [jobs.ingest("CT_small.dcm"), jobs.ingest("MR_small.dcm")]
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=sops))
    assert jobs.worker().run_next() is True
    job = jobs.queue.get(job_id)
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["model"]["name"] == "probe-model" and result["model"]["version"] == "1.0"
    assert result["notice"] == "demonstration model, not for clinical use"
    assert sorted(result["inputs"]["sop_instance_uids"]) == sorted(sops)
    assert result["measurements"][0]["value"] == 2
    key = jobs.queue.result_arrays(job_id)["h.npy"]
    with jobs.blobs.open(key) as f:
        assert np.load(f).tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert jobs.store.orphan_blobs() == []  # result arrays are not taken for crash leftovers
    assert not list((jobs.tmp / "work").iterdir())  # scratch removed


def test_app_exception_is_the_failure_reason_and_retried(jobs: Jobs, tmp_path: Path) -> None:
    jobs.registry.apps["probe"] = jobs.registry.apps["probe"].__class__(
        **{**jobs.registry.apps["probe"].__dict__, "model_path": probe_bundle(tmp_path / "bad", "raise")})
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=[jobs.ingest()], max_attempts=2))
    w = jobs.worker()
    assert w.run_next() and w.run_next()
    job = jobs.queue.get(job_id)
    assert job["state"] == "failed"
    reasons = [a["reason"] for a in job["attempt_history"]]
    assert len(reasons) == 2
    assert all("RuntimeError: probe failure requested by its model bundle" in r for r in reasons), reasons


def test_missing_model_bundle_fails_with_its_path(jobs: Jobs, tmp_path: Path) -> None:
    spec = jobs.registry.apps["probe"]
    jobs.registry.apps["probe"] = spec.__class__(**{**spec.__dict__, "model_path": tmp_path / "nowhere"})
    assert jobs.registry.apps["probe"].model_version() == "unavailable"
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=[jobs.ingest()], max_attempts=1))
    jobs.worker().run_next()
    job = jobs.queue.get(job_id)
    assert job["state"] == "failed"
    assert "no model bundle at" in job["error"] and "nowhere" in job["error"]


def test_timeout_kills_the_app_and_ends_dead(jobs: Jobs, tmp_path: Path) -> None:
    spec = jobs.registry.apps["probe"]
    jobs.registry.apps["probe"] = spec.__class__(**{**spec.__dict__,
                                                    "model_path": probe_bundle(tmp_path / "slow", "sleep:30")})
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=[jobs.ingest()], max_attempts=1, timeout=1.0))
    t0 = time.monotonic()
    jobs.worker().run_next()
    assert time.monotonic() - t0 < 10
    job = jobs.queue.get(job_id)
    assert job["state"] == "dead"
    assert "longer than its timeout of 1 s" in job["error"]


def test_cancel_while_running_stops_the_app(jobs: Jobs, tmp_path: Path) -> None:
    spec = jobs.registry.apps["probe"]
    jobs.registry.apps["probe"] = spec.__class__(**{**spec.__dict__,
                                                    "model_path": probe_bundle(tmp_path / "slow", "sleep:30")})
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=[jobs.ingest()]))
    w = jobs.worker()
    w.renew_interval = 0.2
    t = threading.Thread(target=w.run_next)
    t.start()
    deadline = time.monotonic() + 10
    while jobs.queue.get(job_id)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.queue.cancel(job_id) == "cancelling"
    t.join(timeout=10)
    assert not t.is_alive()
    job = jobs.queue.get(job_id)
    assert job["state"] == "cancelled"
    assert job["attempt_history"][-1]["outcome"] == "cancelled"


def test_lab_input_is_a_bundle_of_the_exact_versions(jobs: Jobs) -> None:
    pat = jobs.fhir.create({"resourceType": "Patient", "identifier": [{"value": "P1"}]})
    obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pat.id}"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "1975-2"}]},
           "valueQuantity": {"value": 1.0, "unit": "mg/dL"}, "effectiveDateTime": "2026-11-20T10:00:00Z"}
    o1 = jobs.fhir.create(obs)
    jobs.fhir.update("Observation", o1.id, {**obs, "id": o1.id, "valueQuantity": {"value": 2.0, "unit": "mg/dL"}})
    bundle = jobs.worker().labs_bundle({"patient": f"Patient/{pat.id}",
                                        "observations": [f"Observation/{o1.id}/_history/1"]})
    assert bundle["type"] == "collection"
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "Observation"]
    assert bundle["entry"][1]["resource"]["valueQuantity"]["value"] == 1.0  # version 1, not the current one


def test_failure_reason_prefers_the_operator_exception() -> None:
    err = "\n".join(["[info] starting", "[error] [gxf_wrapper.cpp:146] Exception occurred for operator: "
                     "'classifier' - ValueError: no CR/DX image among the inputs", "Traceback (most recent call last):",
                     "RuntimeError: Graph wait failed"])
    assert failure_reason(err, 1) == "operator classifier: ValueError: no CR/DX image among the inputs (exit code 1)"
    assert failure_reason("x\nKeyError: 'a'\n", 1) == "KeyError: 'a' (exit code 1)"
    assert "signal 9" in failure_reason("", -9)


def test_router_queues_one_job_for_a_study_routed_twice(jobs: Jobs) -> None:
    from interop.config import RoutingRule, StudyMatch

    jobs.router.rules.sync_config([RoutingRule(name="ct", app="probe", study=StudyMatch(modalities=["CT"]))])
    jobs.ingest("CT_small.dcm")
    import pydicom
    from pydicom.data import get_testdata_file

    study_uid = str(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID)
    from interop.jobs.queue import utcnow

    first = jobs.router.route_study(study_uid, utcnow())
    second = jobs.router.route_study(study_uid, utcnow())
    assert len(first) == 1 and second == []
    [job] = jobs.queue.search()
    assert job["rule"] == "ct" and job["study_uid"] == study_uid
    assert json.loads(json.dumps(job["inputs"]))["sop_instance_uids"]
