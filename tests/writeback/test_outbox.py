"""The write-back outbox (interop.writeback.plan, .outbox): rows made with the job's success, SOP Instance
UIDs fixed by the job, delivery to the node's own store, failures kept with their reason and retried."""

from __future__ import annotations

from sqlalchemy import func, select

from interop.store.models import Instance
from interop.writeback.outbox import Outbox
from interop.writeback.plan import plan
from tests.jobs.conftest import Jobs

FINDING = {"name": "x", "code": {"system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax"},
           "probability": 0.7, "threshold": 0.5, "present": True}


def _result(sop: str) -> dict:  # type: ignore[type-arg]
    return {"schema": "interop.app-result/1", "app": {"name": "probe", "version": "0.0.1"},
            "model": {"name": "probe-model", "version": "1.0", "path": "/m", "sha256": "", "demonstration": True,
                      "notice": "demonstration model, not for clinical use"},
            "notice": "demonstration model, not for clinical use", "inputs": {"sop_instance_uids": [sop]},
            "findings": [{**FINDING, "sop_instance_uid": sop}]}


def test_plan_is_fixed_by_the_job_and_skips_lab_jobs() -> None:
    a = plan("key1", {"sop_instance_uids": ["1.2"]}, {"findings": [FINDING], "segmentations": [{}, {}]})
    assert [(p.kind, p.item) for p in a] == [("sr", 0), ("seg", 0), ("seg", 1)]
    assert a == plan("key1", {"sop_instance_uids": ["1.2"]}, {"findings": [FINDING], "segmentations": [{}, {}]})
    assert plan("key2", {"sop_instance_uids": ["1.2"]}, {"findings": [FINDING]})[0].sop_instance_uid != \
        a[0].sop_instance_uid
    assert len({p.sop_instance_uid for p in a}) == 3 and all(p.sop_instance_uid.startswith("2.25.") for p in a)
    assert plan("key1", {"observations": ["Observation/1/_history/1"]}, {"classifications": [{}]}) == []


def test_success_owes_an_sr_delivered_once_to_the_own_store(jobs: Jobs) -> None:
    sop = jobs.ingest("CT_small.dcm")
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=[sop]))
    claim = jobs.queue.claim("w")
    assert claim is not None and jobs.queue.succeed(claim, _result(sop), {})
    outbox = Outbox(jobs.db, jobs.store, jobs.blobs)
    [row] = outbox.list(job_id=job_id)
    assert row["state"] == "pending" and row["kind"] == "sr"
    assert outbox.run_due() == 1
    [row] = outbox.list(job_id=job_id)
    assert row["state"] == "sent" and row["attempts"] == 1
    with jobs.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(
            Instance.sop_uid == row["sop_instance_uid"])) == 1
    # Delivered again (a crash between storing and marking it sent): the same UID, still one copy.
    with jobs.db.writing() as s:
        from interop.jobs.models import WriteBack

        s.get(WriteBack, row["id"]).state = "pending"  # type: ignore[union-attr]
    outbox.run_due()
    with jobs.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(
            Instance.sop_uid == row["sop_instance_uid"])) == 1


def test_failed_delivery_keeps_its_reason_and_retries(jobs: Jobs) -> None:
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=["1.2.3.999"]))  # an image the store does not hold
    claim = jobs.queue.claim("w")
    assert claim is not None and jobs.queue.succeed(claim, _result("1.2.3.999"), {})
    outbox = Outbox(jobs.db, jobs.store, jobs.blobs)
    outbox.run_due()
    [row] = outbox.list(job_id=job_id)
    assert row["state"] == "retrying" and "no longer stored" in row["error"]
    assert outbox.run_due() == 0  # not due yet (backoff)


def test_router_ignores_the_results_it_wrote(jobs: Jobs) -> None:
    """A rule that matches any series must not send the node's own SR back to an app."""
    from interop.config import RoutingRule, StudyMatch
    from interop.jobs.queue import utcnow

    sop = jobs.ingest("CT_small.dcm")
    job_id, _ = jobs.queue.enqueue(jobs.new_job(sops=[sop]))
    claim = jobs.queue.claim("w")
    assert claim is not None and jobs.queue.succeed(claim, _result(sop), {})
    Outbox(jobs.db, jobs.store, jobs.blobs).run_due()
    import pydicom
    from pydicom.data import get_testdata_file

    study = str(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID)
    facts = jobs.router.study_facts(study, utcnow())
    assert facts is not None and [s.modality for s in facts.series] == ["CT"]
    _, decisions, _ = jobs.router.study_decisions(study, utcnow(), [RoutingRule(name="any", app="probe",
                                                                                study=StudyMatch())])
    assert [d.sop_instance_uids for d in decisions] == [(sop,)]
