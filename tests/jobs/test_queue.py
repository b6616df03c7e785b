"""The durable job queue (interop.jobs.queue) on SQLite and PostgreSQL: idempotency, priority, leases and
fencing, retries with backoff, failed vs dead, cancel and retry."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from interop.errors import Conflict
from interop.jobs.models import Job
from tests.jobs.conftest import Jobs, make_jobs


@pytest.fixture
def q(tmp_path: Path, database_url: str) -> Jobs:
    return make_jobs(tmp_path, database_url)


def state(j: Jobs, job_id: int) -> str:
    return str(j.queue.get(job_id)["state"])


def test_enqueue_same_key_twice_one_job(q: Jobs) -> None:
    a, created_a = q.queue.enqueue(q.new_job("same"))
    b, created_b = q.queue.enqueue(q.new_job("same"))
    assert a == b
    assert created_a and not created_b
    assert len(q.queue.search()) == 1


def test_claim_takes_stat_before_routine(q: Jobs) -> None:
    routine, _ = q.queue.enqueue(q.new_job("r", "routine"))
    stat, _ = q.queue.enqueue(q.new_job("s", "stat"))
    first = q.queue.claim("w")
    assert first is not None and first.job_id == stat
    second = q.queue.claim("w")
    assert second is not None and second.job_id == routine
    assert q.queue.claim("w") is None


def test_claim_concurrent_workers_each_job_once(q: Jobs) -> None:
    for i in range(20):
        q.queue.enqueue(q.new_job(f"k{i}"))
    got: list[int] = []
    lock = threading.Lock()

    def take(name: str) -> None:
        while (c := q.queue.claim(name)) is not None:
            with lock:
                got.append(c.job_id)

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(j["id"] for j in q.queue.search())


def test_failure_retries_with_backoff_then_failed(q: Jobs) -> None:
    job_id, _ = q.queue.enqueue(q.new_job(max_attempts=2, backoff=30))
    c = q.queue.claim("w")
    assert c is not None
    assert q.queue.fail(c, "error", "boom") == "retrying"
    job = q.queue.get(job_id)
    assert job["error"] == "attempt 1: boom"
    assert job["next_attempt_at"] > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=25)
    assert q.queue.claim("w") is None  # not due yet
    with q.db.writing() as s:
        s.get(Job, job_id).next_attempt_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # type: ignore[union-attr]
    c2 = q.queue.claim("w")
    assert c2 is not None and c2.attempt == 2
    assert q.queue.fail(c2, "error", "boom again") == "failed"
    history = q.queue.get(job_id)["attempt_history"]
    assert [(a["number"], a["outcome"], a["reason"]) for a in history] == [(1, "error", "boom"),
                                                                            (2, "error", "boom again")]


def test_timeout_on_last_attempt_is_dead(q: Jobs) -> None:
    job_id, _ = q.queue.enqueue(q.new_job(max_attempts=1))
    c = q.queue.claim("w")
    assert c is not None
    assert q.queue.fail(c, "timeout", "ran too long") == "dead"


def test_lost_lease_run_cannot_finish_the_job(q: Jobs) -> None:
    job_id, _ = q.queue.enqueue(q.new_job())
    stale = q.queue.claim("w1")
    assert stale is not None
    with q.db.writing() as s:  # w1 stops renewing: its lease runs out
        s.get(Job, job_id).lease_expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # type: ignore[union-attr]
    assert q.queue.reap() == [job_id]
    assert state(q, job_id) == "retrying"
    fresh = q.queue.claim("w2")
    assert fresh is not None and fresh.attempt == 2
    assert q.queue.succeed(stale, {"model": {"name": "m", "version": "1"}}, {}) is False
    assert q.queue.renew(stale.job_id, stale.token) == (False, False)
    assert q.queue.succeed(fresh, {"model": {"name": "m", "version": "1"}}, {}) is True
    job = q.queue.get(job_id)
    assert job["state"] == "succeeded"
    assert [a["outcome"] for a in job["attempt_history"]] == ["lost", "succeeded"]


def test_reap_by_owner_prefix_at_start_up(q: Jobs) -> None:
    job_id, _ = q.queue.enqueue(q.new_job())
    q.queue.claim("local@host:123:0")
    assert q.queue.reap(owner_prefix="local@other:") == []
    assert q.queue.reap(owner_prefix="local@host:") == [job_id]


def test_cancel_queued_and_running(q: Jobs) -> None:
    a, _ = q.queue.enqueue(q.new_job("a"))
    assert q.queue.cancel(a) == "cancelled"
    with pytest.raises(Conflict):
        q.queue.cancel(a)
    b, _ = q.queue.enqueue(q.new_job("b"))
    c = q.queue.claim("w")
    assert c is not None and c.job_id == b
    assert q.queue.cancel(b) == "cancelling"
    assert q.queue.renew(b, c.token) == (True, True)
    assert q.queue.fail(c, "cancelled", "cancelled while running") == "cancelled"


def test_retry_requeues_a_failed_job_with_more_attempts(q: Jobs) -> None:
    job_id, _ = q.queue.enqueue(q.new_job(max_attempts=1))
    c = q.queue.claim("w")
    assert c is not None
    q.queue.fail(c, "error", "boom")
    assert state(q, job_id) == "failed"
    with pytest.raises(Conflict):
        q.queue.cancel(job_id)
    q.queue.retry(job_id, 2)
    job = q.queue.get(job_id)
    assert (job["state"], job["max_attempts"]) == ("queued", 3)
    assert q.queue.claim("w") is not None
    with pytest.raises(Conflict):
        q.queue.retry(job_id, 2)  # running: nothing to retry
