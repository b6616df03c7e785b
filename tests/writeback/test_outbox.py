"""Reports and the write-back outbox without the servers (interop.reports.service, interop.writeback.plan,
.outbox): a report made with the job's success; the reporter builds its FHIR bundle and the objects each
destination is owed; SOP Instance UIDs fixed by the job; delivery to the node's own store and FHIR facade;
failures kept with their reason and retried; verdicts that make a verified SR and move the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from interop.config import Settings
from interop.errors import Conflict, InvalidInput
from interop.reports.models import Report
from interop.reports.service import Reporter, SignOffs, critical_findings
from interop.store.models import Instance
from interop.writeback.outbox import Outbox, pn
from interop.writeback.plan import plan
from operators.app_result import AppResult
from tests.jobs.conftest import Jobs

FINDING = {"name": "x", "code": {"system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax"},
           "probability": 0.7, "threshold": 0.5, "present": True}
CT = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)


def _result(sops: list[str], **extra: object) -> dict:  # type: ignore[type-arg]
    return {"schema": "interop.app-result/1", "app": {"name": "probe", "version": "0.0.1"},
            "model": {"name": "probe-model", "version": "1.0", "path": "/m", "sha256": "", "demonstration": True,
                      "notice": "demonstration model, not for clinical use"},
            "notice": "demonstration model, not for clinical use", "inputs": {"sop_instance_uids": sops},
            "findings": [{**FINDING, "sop_instance_uid": sops[0]}], **extra}


def _node(jobs: Jobs, tmp: Path, **reports: object) -> tuple[Reporter, Outbox, SignOffs]:
    settings = Settings(data_dir=tmp / "node", reports={"recommendations": False, **reports})
    reporter = Reporter(jobs.db, jobs.fhir, jobs.registry, settings, {})
    outbox = Outbox(jobs.db, jobs.store, jobs.blobs, jobs.fhir, organization=settings.reports.organization)
    outbox.before_drain = reporter.build_due
    return reporter, outbox, SignOffs(jobs.db, reporter)


def _succeed(jobs: Jobs, sops: list[str], key: str = "k1") -> int:
    job = dataclasses.replace(jobs.new_job(key=key, sops=sops), study_uid=str(CT.StudyInstanceUID),
                              patient_id=str(CT.PatientID))
    job_id, _ = jobs.queue.enqueue(job)
    claim = jobs.queue.claim("w")
    assert claim is not None and jobs.queue.succeed(claim, _result(sops), {})
    return job_id


def test_plan_is_fixed_by_the_job_and_skips_lab_jobs() -> None:
    f = {**FINDING, "heatmap": "h.npy"}
    a = plan("key1", {"sop_instance_uids": ["1.2"]}, {"findings": [f], "segmentations": [{}, {}]})
    assert [(p.kind, p.item) for p in a] == [("sr", 0), ("seg", 0), ("seg", 1), ("heatmap", 0)]
    assert a == plan("key1", {"sop_instance_uids": ["1.2"]}, {"findings": [f], "segmentations": [{}, {}]})
    assert plan("key2", {"sop_instance_uids": ["1.2"]}, {"findings": [f]})[0].sop_instance_uid != \
        a[0].sop_instance_uid
    assert len({p.sop_instance_uid for p in a}) == 4 and all(p.sop_instance_uid.startswith("2.25.") for p in a)
    # An absent finding has no heat-map object; each destination gets the same UIDs.
    b = plan("key1", {"sop_instance_uids": ["1.2"]}, {"findings": [{**f, "present": False}]}, ["local", "pacs"])
    assert [(p.destination, p.kind) for p in b] == [("local", "sr"), ("pacs", "sr")]
    assert b[0].sop_instance_uid == b[1].sop_instance_uid == a[0].sop_instance_uid
    assert plan("key1", {"observations": ["Observation/1/_history/1"]}, {"classifications": [{}]}) == []


def test_critical_findings_are_present_ones_at_or_above_their_threshold() -> None:
    r = AppResult.model_validate(_result(["1.2"]))
    assert critical_findings(r, {"x": 0.7}) == ["x"]
    assert critical_findings(r, {"x": 0.71}) == [] and critical_findings(r, {}) == []


def test_success_makes_a_report_whose_sr_and_bundle_are_delivered_once(jobs: Jobs, tmp_path: Path) -> None:
    sop = jobs.ingest("CT_small.dcm")
    job_id = _succeed(jobs, [sop])
    reporter, outbox, signoffs = _node(jobs, tmp_path)
    with jobs.db.reading() as s:
        [report] = s.scalars(select(Report))
        assert report.state == "building" and report.job_id == job_id
    assert outbox.rows(job_id=job_id) == []  # nothing is owed before the report is built
    outbox.drain()
    rows = outbox.rows(job_id=job_id)
    assert sorted((r["destination"], r["kind"], r["state"]) for r in rows) == [
        ("local", "fhir", "sent"), ("local", "sr", "sent")]
    sr_row = next(r for r in rows if r["kind"] == "sr")
    with jobs.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(
            Instance.sop_uid == sr_row["sop_instance_uid"])) == 1
    got = signoffs.get(report.id)
    assert got["status"] == "preliminary" and got["priority"] == "routine"
    assert got["sr_sop_instance_uid"] == sr_row["sop_instance_uid"]
    assert "demonstration model" in got["text"]
    [dr] = [e["resource"] for e in jobs.fhir.search("DiagnosticReport", [("status", "preliminary")])["entry"]]
    assert dr["imagingStudy"] and dr["result"]
    tasks = jobs.fhir.search("Task", [("status", "requested"), ("priority", "routine")])
    assert tasks["total"] == 1
    # Delivered again (a crash between delivering and marking it sent): the same UID and identifiers,
    # still one SR and one report.
    with jobs.db.writing() as s:
        from interop.jobs.models import WriteBack

        for r in s.scalars(select(WriteBack)):
            r.state = "pending"
    outbox.drain()
    with jobs.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(
            Instance.sop_uid == sr_row["sop_instance_uid"])) == 1
    assert jobs.fhir.search("DiagnosticReport", [])["total"] == 1
    assert jobs.fhir.search("Task", [])["total"] == 1


def test_failed_delivery_keeps_its_reason_and_retries(jobs: Jobs, tmp_path: Path) -> None:
    sop = jobs.ingest("CT_small.dcm")
    job_id = _succeed(jobs, [sop, "1.2.3.999"])  # one source image the store does not hold
    _, outbox, _ = _node(jobs, tmp_path)
    outbox.drain()
    rows = {r["kind"]: r for r in outbox.rows(job_id=job_id)}
    assert rows["fhir"]["state"] == "sent"
    assert rows["sr"]["state"] == "retrying" and "no longer stored" in rows["sr"]["error"]
    assert rows["sr"]["next_attempt_at"] is not None
    assert outbox.run_due() == 0  # not due yet (backoff)
    counts = dict(outbox.counts())
    assert counts[("local", "retrying")] == 1 and counts[("local", "sent")] == 1


def test_a_report_that_cannot_be_built_keeps_its_reason(jobs: Jobs, tmp_path: Path) -> None:
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=["1.2.3"]))  # no patient, no study
    claim = jobs.queue.claim("w")
    assert claim is not None and jobs.queue.succeed(claim, _result(["1.2.3"]), {})
    reporter, outbox, signoffs = _node(jobs, tmp_path)
    outbox.drain()
    [got] = signoffs.reports()
    assert got["status"] == "failed" and "no patient" in got["error"] and got["job_id"] == job_id
    assert reporter.build_due() == 0  # backoff before the next try
    with pytest.raises(Conflict):
        signoffs.verdict(got["id"], action="accept", reader_id="u1", reader_name="Jane Doe")


def test_accept_makes_a_verified_sr_and_a_final_report(jobs: Jobs, tmp_path: Path) -> None:
    sop = jobs.ingest("CT_small.dcm")
    _succeed(jobs, [sop])
    _, outbox, signoffs = _node(jobs, tmp_path, organization="Radiology, St Elsewhere")
    signoffs.on_signed = outbox.wake
    outbox.drain()
    [rep] = signoffs.reports(status="preliminary")
    with pytest.raises(InvalidInput):
        signoffs.verdict(rep["id"], action="reject", reader_id="u1", reader_name="Jane Doe")  # no reason
    with pytest.raises(InvalidInput):
        signoffs.verdict(rep["id"], action="amend", reader_id="u1", reader_name="Jane Doe",
                         findings={"nonexistent": True})
    # the reader's input is checked before anything is built: a 400 that says what is wrong, never a 500
    with pytest.raises(InvalidInput, match="findings"):
        signoffs.verdict(rep["id"], action="accept", reader_id="u1", reader_name="Jane Doe", findings={"x": False})
    with pytest.raises(InvalidInput, match="name"):
        signoffs.verdict(rep["id"], action="accept", reader_id="u1", reader_name=" ")
    assert signoffs.get(rep["id"])["status"] == "preliminary" and not signoffs.get(rep["id"])["signoffs"]
    out = signoffs.verdict(rep["id"], action="accept", reader_id="u1", reader_name="Jane Doe")
    assert out["status"] == "final" and out["status_before"] == "preliminary" and out["verified_sr"]
    outbox.drain()
    assert all(r["state"] == "sent" for r in outbox.rows(report_id=rep["id"]))
    with jobs.db.reading() as s:
        key = s.scalars(select(Instance.blob_key).where(Instance.sop_uid == out["verified_sr"])).one()
    with jobs.blobs.open(key) as f:
        sr = pydicom.dcmread(f)
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName == "Doe^Jane"
    assert sr.VerifyingObserverSequence[0].VerifyingOrganization == "Radiology, St Elsewhere"
    pred = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == rep["sr_sop_instance_uid"]
    [dr] = [e["resource"] for e in jobs.fhir.search("DiagnosticReport", [])["entry"]]
    assert dr["status"] == "final"
    assert jobs.fhir.search("Task", [("status", "completed")])["total"] == 1
    [audit] = [e["resource"] for e in jobs.fhir.search("AuditEvent", [("subtype", "signoff")])["entry"]]
    assert audit["agent"][0]["who"]["identifier"]["value"] == "u1"
    assert {d["type"]: d["valueString"] for d in audit["entity"][0]["detail"]} == {"verdict": "accept",
                                                                                   "status": "final"}
    # Amend after final: amended, a second verified SR superseding the first.
    out2 = signoffs.verdict(rep["id"], action="amend", reader_id="u1", reader_name="Jane Doe",
                            findings={"x": False}, conclusion="No pneumothorax.")
    assert out2["status"] == "amended" and out2["verified_sr"] not in (None, out["verified_sr"])
    outbox.drain()
    [dr] = [e["resource"] for e in jobs.fhir.search("DiagnosticReport", [])["entry"]]
    assert dr["status"] == "amended"
    got = signoffs.get(rep["id"])
    assert [v["action"] for v in got["signoffs"]] == ["accept", "amend"]
    # The feedback table: the AI's output beside each verdict.
    rows = signoffs.feedback_rows()
    assert [(r["action"], r["name"], r["ai_value"], r["physician_value"], r["agrees"]) for r in rows] == [
        ("accept", "x", True, True, True), ("amend", "x", True, False, False)]
    csv_text = signoffs.feedback_csv()
    assert csv_text.splitlines()[0].startswith("signoff_id,report_id,job_id,app") and len(csv_text.splitlines()) == 3


def test_reject_cancels_and_makes_no_sr(jobs: Jobs, tmp_path: Path) -> None:
    sop = jobs.ingest("CT_small.dcm")
    _succeed(jobs, [sop])
    _, outbox, signoffs = _node(jobs, tmp_path)
    outbox.drain()
    [rep] = signoffs.reports()
    out = signoffs.verdict(rep["id"], action="reject", reader_id="u2", reader_name="Doe^John",
                           reason="wrong patient positioning, unreadable")
    assert out["status"] == "cancelled" and out["verified_sr"] is None
    outbox.drain()
    assert [r["kind"] for r in outbox.rows(report_id=rep["id"]) if r["signoff_id"]] == ["fhir"]
    [dr] = [e["resource"] for e in jobs.fhir.search("DiagnosticReport", [])["entry"]]
    assert dr["status"] == "cancelled"
    with pytest.raises(Conflict):
        signoffs.verdict(rep["id"], action="accept", reader_id="u2", reader_name="Doe^John")
    assert signoffs.feedback_rows()[0]["agrees"] is None


def test_a_signoff_bundle_waits_for_the_preliminary_one(jobs: Jobs, tmp_path: Path) -> None:
    sop = jobs.ingest("CT_small.dcm")
    job_id = _succeed(jobs, [sop])
    reporter, outbox, signoffs = _node(jobs, tmp_path)
    reporter.build_due()
    [rep] = signoffs.reports()
    signoffs.verdict(rep["id"], action="accept", reader_id="u1", reader_name="Jane Doe")
    from interop.jobs.models import WriteBack

    with jobs.db.writing() as s:  # the preliminary bundle is failing (say the FHIR store refused it)
        first = s.scalars(select(WriteBack).where(WriteBack.kind == "fhir").order_by(WriteBack.id)).first()
        assert first is not None and first.signoff_id is None
        first.state = "dead"
    outbox.run_due()
    signed = [r for r in outbox.rows(job_id=job_id) if r["kind"] == "fhir" and r["signoff_id"]]
    assert [r["state"] for r in signed] == ["pending"]  # waits, spending no attempt
    outbox.retry(first.id)
    outbox.drain()
    assert {r["state"] for r in outbox.rows(job_id=job_id)} == {"sent"}
    [dr] = [e["resource"] for e in jobs.fhir.search("DiagnosticReport", [])["entry"]]
    assert dr["status"] == "final"


def test_critical_finding_makes_a_stat_task_and_one_communication(jobs: Jobs, tmp_path: Path) -> None:
    sop = jobs.ingest("CT_small.dcm")
    _succeed(jobs, [sop])
    _, outbox, signoffs = _node(jobs, tmp_path, critical={"x": 0.5})
    outbox.drain()
    [rep] = signoffs.reports()
    assert rep["priority"] == "stat" and rep["critical"] == ["x"]
    assert jobs.fhir.search("Task", [("priority", "stat")])["total"] == 1
    assert jobs.fhir.search("Communication", [])["total"] == 1
    outbox.drain()
    assert jobs.fhir.search("Communication", [])["total"] == 1


def test_pn() -> None:
    assert pn("Jane Doe") == "Doe^Jane" and pn("Doe^Jane") == "Doe^Jane" and pn("admin") == "admin"
    assert pn("Mary Ann Smith") == "Smith^Mary Ann"


def test_router_ignores_the_results_it_wrote(jobs: Jobs, tmp_path: Path) -> None:
    """A rule that matches any series must not send the node's own SR back to an app."""
    from interop.config import RoutingRule, StudyMatch
    from interop.jobs.queue import utcnow

    sop = jobs.ingest("CT_small.dcm")
    _succeed(jobs, [sop])
    _node(jobs, tmp_path)[1].drain()
    study = str(CT.StudyInstanceUID)
    facts = jobs.router.study_facts(study, utcnow())
    assert facts is not None and [s.modality for s in facts.series] == ["CT"]
    _, decisions, _ = jobs.router.study_decisions(study, utcnow(), [RoutingRule(name="any", app="probe",
                                                                                study=StudyMatch())])
    assert [d.sop_instance_uids for d in decisions] == [(sop,)]
