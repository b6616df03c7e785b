"""Retention (interop.retention): received images go ``days`` after their results were delivered, never before.

Real data through the real pipeline, without the servers: instances ingested by the store, a job that succeeds,
the reporter and the outbox delivering the AI's SR and FHIR bundle to the node itself, a physician's sign-off and
its delivery; then retention with a clock moved forward. SQLite and PostgreSQL. The decision rules themselves
are also checked as a pure function."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from interop.config import RetentionSettings, Settings
from interop.jobs.models import Job, WriteBack
from interop.reports.service import Reporter, SignOffs
from interop.retention import Retention, StudyFacts, decide
from interop.store.instances import InstanceStore, StoreResult
from interop.store.models import Instance, Series, Study, StudyEvent
from interop.writeback.outbox import Outbox
from tests.jobs.conftest import Jobs, make_jobs

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
POLICY = RetentionSettings(enabled=True, days=30)


# -- the rules --------------------------------------------------------------------------------------------------


def _facts(**kw: object) -> StudyFacts:
    base: dict[str, object] = dict(study_uid="1.2.3", state="ready", last_received_at=NOW - 40 * DAY,
                                   jobs={"succeeded": 1}, reports={"final": 1}, writebacks={"sent": 3},
                                   last_job_at=NOW - 40 * DAY, last_report_at=NOW - 35 * DAY,
                                   last_sent_at=NOW - 31 * DAY)
    base.update(kw)
    return StudyFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "why"), [
    ({"state": "receiving"}, "the study is receiving"),
    ({"jobs": {"succeeded": 1, "running": 1}}, "jobs not finished: 1 running"),
    ({"jobs": {"succeeded": 1, "retrying": 1}}, "jobs not finished: 1 retrying"),
    ({"reports": {"building": 1}}, "reports not built"),
    ({"reports": {"final": 1, "preliminary": 1}}, "await sign-off"),
    ({"writebacks": {"sent": 2, "pending": 1}}, "write-backs not delivered: 1 pending"),
    ({"writebacks": {"sent": 2, "dead": 1}}, "write-backs not delivered: 1 dead"),
    ({"writebacks": {"sent": 2, "sending": 1}}, "write-backs not delivered: 1 sending"),
    ({"last_sent_at": NOW - 29 * DAY}, "29.0 of 30 days ago"),
    ({"last_report_at": NOW - 2 * DAY}, "2.0 of 30 days ago"),  # a late sign-off restarts the clock
    ({"jobs": {"failed": 1}, "reports": {}, "writebacks": {}}, "no results"),
    ({"jobs": {}, "reports": {}, "writebacks": {}}, "no results"),
])
def test_kept_while_anything_is_owed(change: dict[str, object], why: str) -> None:
    ok, reason = decide(_facts(**change), POLICY, NOW)
    assert not ok
    assert why in reason


def test_deleted_once_everything_is_delivered_and_old_enough() -> None:
    ok, reason = decide(_facts(), POLICY, NOW)
    assert ok and "results delivered" in reason and "31.0 days ago" in reason
    # A study that never had a result goes only when its own period is set, and past it.
    none = _facts(jobs={"cancelled": 1}, reports={}, writebacks={}, last_report_at=None, last_sent_at=None)
    assert decide(none, POLICY.model_copy(update={"without_results_days": 50}), NOW)[0] is False
    assert decide(none, POLICY.model_copy(update={"without_results_days": 10}), NOW)[0] is True
    # Unsigned reports may be let go when the site says so.
    unsigned = _facts(reports={"preliminary": 1})
    assert decide(unsigned, POLICY.model_copy(update={"require_signoff": False}), NOW)[0] is True


# -- the real pipeline --------------------------------------------------------------------------------------------


@pytest.fixture
def jobs(database_url: str, tmp_path: Path) -> Jobs:
    j = make_jobs(tmp_path, database_url)
    yield j  # type: ignore[misc]
    j.db.dispose()


def _study(jobs: Jobs, n: int = 2) -> tuple[str, list[str]]:
    """A new study of ``n`` CT instances, ingested through the store (``source = stow``)."""
    ds = dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    sops = []
    for _ in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = jobs.blobs.temp_dir() / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path)
        jobs.store.ingest(path, source="stow")
        sops.append(str(ds.SOPInstanceUID))
    return str(ds.StudyInstanceUID), sops


def _result(sops: list[str]) -> dict[str, object]:
    finding = {"name": "x", "code": {"system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax"},
               "probability": 0.7, "threshold": 0.5, "present": True, "sop_instance_uid": sops[0]}
    return {"schema": "interop.app-result/1", "app": {"name": "probe", "version": "0.0.1"},
            "model": {"name": "probe-model", "version": "1.0", "path": "/m", "sha256": "", "demonstration": True,
                      "notice": "demonstration model, not for clinical use"},
            "notice": "demonstration model, not for clinical use", "inputs": {"sop_instance_uids": sops},
            "findings": [finding]}


def _analysed(jobs: Jobs, tmp_path: Path, study_uid: str, sops: list[str], key: str) -> tuple[Outbox, SignOffs, int]:
    """A job on the study that succeeds; its report built and its SR and FHIR bundle delivered to this node."""
    patient = str(dcmread(str(get_testdata_file("CT_small.dcm")), stop_before_pixels=True).PatientID)
    job = dataclasses.replace(jobs.new_job(key=key, sops=sops), study_uid=study_uid, patient_id=patient)
    jobs.queue.enqueue(job)
    claim = jobs.queue.claim("w")
    assert claim is not None and jobs.queue.succeed(claim, _result(sops), {})
    settings = Settings(data_dir=tmp_path / "node", reports={"recommendations": False})
    reporter = Reporter(jobs.db, jobs.fhir, jobs.registry, settings, {})
    outbox = Outbox(jobs.db, jobs.store, jobs.blobs, jobs.fhir)
    outbox.before_drain = reporter.build_due
    outbox.drain()
    signoffs = SignOffs(jobs.db, reporter)
    [report] = [r for r in signoffs.reports(status="preliminary") if r["study_uid"] == study_uid]
    _ready(jobs)
    return outbox, signoffs, int(report["id"])


def _one_more(jobs: Jobs, study_uid: str, series_uid: str) -> StoreResult:
    path = jobs.blobs.temp_dir() / "one-more.dcm"
    ds = dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path)
    return jobs.store.ingest(path, source="stow")


def _ready(jobs: Jobs) -> None:
    """What study assembly does after the quiet period (the local SR write-back re-opened the study)."""
    with jobs.db.writing() as s:
        s.execute(update(Study).values(state="ready"))


def _instances(jobs: Jobs, study_uid: str) -> list[tuple[str, str, str]]:
    with jobs.db.reading() as s:
        return [(r.sop_uid, r.source, r.blob_key) for r in s.execute(
            select(Instance.sop_uid, Instance.source, Instance.blob_key).join(Study, Study.id == Instance.study_pk)
            .where(Study.study_uid == study_uid))]


def test_only_delivered_signed_and_old_studies_lose_their_received_images(jobs: Jobs, tmp_path: Path) -> None:
    done_uid, done_sops = _study(jobs)
    outbox, signoffs, report_id = _analysed(jobs, tmp_path, done_uid, done_sops, "k-done")
    signoffs.verdict(report_id, action="accept", reader_id="u1", reader_name="Jane Doe")
    outbox.drain()
    unsigned_uid, unsigned_sops = _study(jobs)
    _analysed(jobs, tmp_path, unsigned_uid, unsigned_sops, "k-unsigned")
    plain_uid, _ = _study(jobs)  # no rule matched it: no job, no result
    with jobs.db.reading() as s:
        plain_series = s.scalars(select(Series.series_uid).join(Study).where(Study.study_uid == plain_uid)).one()
    _ready(jobs)
    received = {k for _, src, k in _instances(jobs, done_uid) if src == "stow"}
    own = {u for u, src, _ in _instances(jobs, done_uid) if src == "writeback"}
    assert len(received) == 2 and len(own) == 2, "the AI's SR and the verified SR are stored in the study"
    with jobs.db.reading() as s:
        assert set(s.scalars(select(WriteBack.state))) == {"sent"}

    # Never before: 29 days after the last delivery nothing goes.
    at = [dt.datetime.now(dt.UTC) + 29 * DAY]
    retention = Retention(jobs.db, jobs.blobs, POLICY, store=jobs.store, clock=lambda: at[0])
    assert retention.run() == []
    assert list(retention.review()) == [], "no study received more than 30 days ago: none is even considered"

    at[0] = dt.datetime.now(dt.UTC) + 31 * DAY
    reasons = {d.study_uid: d.reason for d in retention.review()}
    assert "await sign-off" in reasons[unsigned_uid] and "no results" in reasons[plain_uid]
    dry = retention.run(dry_run=True)
    assert [(d.study_uid, d.instances) for d in dry] == [(done_uid, 2)]
    assert len(_instances(jobs, done_uid)) == 4, "a dry run deletes nothing"

    [gone] = retention.run()
    assert (gone.study_uid, gone.instances) == (done_uid, 2) and "results delivered" in gone.reason
    left = _instances(jobs, done_uid)
    assert {u for u, _, _ in left} == own, "the node's own SRs stay; the received images go"
    for key in received:
        assert not (jobs.blobs.local_path(key) or Path("/nonexistent")).exists()
    for _, _, key in left:
        assert jobs.blobs.local_path(key).exists()  # type: ignore[union-attr]
    with jobs.db.reading() as s:
        kept_series = set(s.scalars(select(Series.id).join(Study).where(Study.study_uid == done_uid)))
        own_series = set(s.scalars(select(Instance.series_pk).where(Instance.sop_uid.in_(own))))
        assert kept_series == own_series, "the received series is gone, the SR series stay"
        [event] = s.scalars(select(StudyEvent).where(StudyEvent.kind == "purged"))
        assert event.study_uid == done_uid and event.instance_count == 2
    assert len(_instances(jobs, unsigned_uid)) == 3 and len(_instances(jobs, plain_uid)) == 2
    assert jobs.fhir.search("DiagnosticReport", [])["total"] == 2, "the FHIR results stay"
    assert InstanceStore(jobs.db, jobs.blobs).orphan_blobs() == []
    assert retention.run() == [], "a second pass finds nothing more to delete"

    # Sites that don't keep unsigned results can say so; studies without results go after their own period.
    _one_more(jobs, plain_uid, plain_series)  # this store now caches the study's and series' keys
    _ready(jobs)
    lax = Retention(jobs.db, jobs.blobs, POLICY.model_copy(update={"require_signoff": False,
                                                                   "without_results_days": 10}),
                    clock=lambda: at[0])
    assert {d.study_uid for d in lax.run()} == {unsigned_uid, plain_uid}
    assert _instances(jobs, plain_uid) == []
    with jobs.db.reading() as s:
        assert s.scalar(select(Study.id).where(Study.study_uid == plain_uid)) is None, \
            "a study with nothing left loses its row"

    # The study is sent again (a prior for a later exam) after another process (the CLI, no `store=`) deleted
    # its rows: the store, which cached the study's and series' keys, takes it all the same.
    assert _one_more(jobs, plain_uid, plain_series).stored
    assert [src for _, src, _ in _instances(jobs, plain_uid)] == ["stow"]


def test_undelivered_or_unfinished_work_keeps_the_study(jobs: Jobs, tmp_path: Path) -> None:
    uid, sops = _study(jobs)
    outbox, signoffs, report_id = _analysed(jobs, tmp_path, uid, sops, "k1")
    signoffs.verdict(report_id, action="accept", reader_id="u1", reader_name="Jane Doe")
    outbox.drain()
    _ready(jobs)
    later = dt.datetime.now(dt.UTC) + 60 * DAY
    retention = Retention(jobs.db, jobs.blobs, POLICY, clock=lambda: later)
    for state in ("pending", "retrying", "dead"):
        with jobs.db.writing() as s:
            s.execute(update(WriteBack).where(WriteBack.kind == "fhir").values(state=state))
        assert retention.run() == [], state
        [d] = list(retention.review())
        assert f"write-backs not delivered: 2 {state}" in d.reason  # the preliminary and the final bundle
    with jobs.db.writing() as s:
        s.execute(update(WriteBack).values(state="sent"))
    # A second job on the study (another rule) still queued: kept.
    jobs.queue.enqueue(dataclasses.replace(jobs.new_job(key="k2", sops=sops), study_uid=uid))
    assert retention.run() == []
    with jobs.db.writing() as s:
        s.execute(update(Job).where(Job.idempotency_key == "k2").values(state="cancelled"))
    # A new instance arrived: the study is receiving again.
    with jobs.db.writing() as s:
        s.execute(update(Study).values(state="receiving"))
    assert retention.run() == []
    _ready(jobs)
    assert [d.study_uid for d in retention.run()] == [uid]


def test_a_file_left_by_a_failed_delete_is_an_orphan_store_check_finds(jobs: Jobs, tmp_path: Path) -> None:
    uid, sops = _study(jobs, 1)
    outbox, signoffs, report_id = _analysed(jobs, tmp_path, uid, sops, "k1")
    signoffs.verdict(report_id, action="reject", reader_id="u1", reader_name="Jane Doe", reason="artefact")
    outbox.drain()
    _ready(jobs)
    [key] = [k for _, src, k in _instances(jobs, uid) if src == "stow"]

    class Failing:
        def __getattr__(self, name: str) -> object:
            return getattr(jobs.blobs, name)

        def delete(self, key: str) -> None:
            raise OSError("disk went away")

    later = dt.datetime.now(dt.UTC) + 31 * DAY
    [gone] = Retention(jobs.db, Failing(), POLICY, clock=lambda: later).run()  # type: ignore[arg-type]
    assert gone.study_uid == uid
    assert InstanceStore(jobs.db, jobs.blobs).orphan_blobs() == [key]


def test_cli_dry_run_lists_and_run_deletes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(INTEROP_DATA_DIR=str(tmp_path / "node"), INTEROP_RETENTION__WITHOUT_RESULTS_DAYS="0.00001")
    jobs = make_jobs(tmp_path / "node", f"sqlite:///{tmp_path / 'node' / 'interop.db'}")
    shutil.rmtree(jobs.blobs.root)
    jobs.blobs = type(jobs.blobs)(tmp_path / "node" / "blobs")
    jobs.store = InstanceStore(jobs.db, jobs.blobs)
    uid, _ = _study(jobs)
    _ready(jobs)
    with jobs.db.writing() as s:
        s.execute(update(Study).values(last_received_at=dt.datetime.now(dt.UTC) - DAY))
    jobs.db.dispose()

    def interop(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "interop", *args], env=env, capture_output=True, text=True,
                              timeout=120, check=True)

    dry = interop("retention", "run", "--dry-run")
    assert dry.stdout.startswith(f"would delete\t{uid}\t2\tno results; last activity")
    assert "would delete 2 instance(s)" in dry.stderr
    run = interop("retention", "run")
    assert run.stdout.startswith(f"deleted\t{uid}\t2\t")
    assert interop("store", "check").stdout.split() == []
    assert interop("retention", "run").stdout == ""

