"""Whole-pipeline throughput: studies per minute from ingest through CPU inference to the results in the PACS,
with one and with two inference workers; the ratio says whether scale-out scales.

The topology is ``docker-compose.yml``'s as processes (``tests/test_topology.py``'s :class:`Topology`):
PostgreSQL 15 and Redis, ``interop serve`` with the Celery executor, ``interop worker`` processes, Orthanc 1.10
as the PACS the results go back to (C-STORE from AE INTEROP). For each worker count a fresh database, node and
Orthanc are started; first one warm-up study per worker goes through (the first job of a worker starts its
app process cold, and the server loads its report models), then ``--studies`` chest radiographs (RG1_UNCI with
fresh UIDs, one study each) are sent to the node in one association by ``storescu``, and the clock runs from
the send until the last object owed to Orthanc (each study's TID 1500 SR and heat-maps) was delivered
(``sent_at`` of the write-backs). Printed per run: studies, seconds, studies per minute, the time at which the
last job finished (inference alone), and the attempts per worker; then the two-to-one ratio.

    .venv/bin/python bench/pipeline_throughput.py --studies 12
    .venv/bin/python bench/pipeline_throughput.py --studies 12 --via-orthanc   # ingest by Orthanc's auto-routing

``--via-orthanc`` sends the studies to Orthanc instead, which routes each one to the node once it is stable
(StableAge 2 s): the whole loop PACS → node → PACS. Needs PostgreSQL, Redis, Orthanc with the DICOMweb
plugin and dcmtk (``tests/run.sh`` installs them). On 2 cores the two workers share the CPUs with the server,
Orthanc and PostgreSQL: the ratio is what one machine gains from a second worker, not what a second machine
would.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import conftest  # noqa: E402
from tests.test_topology import FINAL, Topology, attempt_pid, wait_for  # noqa: E402


def ts(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@contextlib.contextmanager
def peers() -> Any:
    """A throwaway PostgreSQL cluster and Redis server: the test suite's own fixtures, used as context managers."""
    with contextlib.contextmanager(conftest.postgres_server.__wrapped__)() as pg, \
            contextlib.contextmanager(conftest.redis_url.__wrapped__)() as redis:
        yield pg, redis


def delivered(http: Any, job_ids: set[int]) -> list[dict[str, Any]] | None:
    """The write-backs to Orthanc of ``job_ids`` once all are sent (None while any is still on its way)."""
    rows = [r for r in http.get("/api/writebacks", params={"destination": "pacs", "limit": 1000}).json()
            if r["job_id"] in job_ids]
    if {r["job_id"] for r in rows if r["kind"] == "sr"} != job_ids:
        return None
    if any(r["state"] != "sent" for r in rows):
        if any(r["state"] == "dead" for r in rows):
            raise RuntimeError(f"write-back dead: {[r for r in rows if r['state'] == 'dead']}")
        return None
    return rows


def run(workers: int, studies: int, via_orthanc: bool, pg_server: str, redis: str, work: Path) -> dict[str, Any]:
    root = work / f"workers-{workers}"
    topo = Topology(root=root, postgres_url=conftest.postgres_url.__wrapped__(pg_server), redis_url=redis,
                    extra_env={"INTEROP_LOG_LEVEL": "WARNING"})
    send = topo.send_to_orthanc if via_orthanc else topo.send_to_node
    try:
        topo.start(workers=workers)
        with topo.client() as http:
            # Warm-up: one study per worker at once; each worker takes one (one app at a time, prefetch 1).
            warm = topo.make_studies(workers, start=10_000)
            send(warm)
            wait_for(lambda: (len(js := topo.jobs(http)) == workers and all(j["state"] in FINAL for j in js)
                              and delivered(http, {j["id"] for j in js})), 600, "the warm-up studies", every=0.5)
            before = {j["id"] for j in topo.jobs(http)}

            files = topo.make_studies(studies)
            t0 = dt.datetime.now(dt.UTC)
            send(files)

            def done() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
                jobs = [j for j in topo.jobs(http) if j["id"] not in before]
                if len(jobs) < studies or any(j["state"] not in FINAL for j in jobs):
                    return None
                failed = [j for j in jobs if j["state"] != "succeeded"]
                if failed:
                    raise RuntimeError(f"{len(failed)} job(s) did not succeed: {failed[0]}")
                rows = delivered(http, {j["id"] for j in jobs})
                return (jobs, rows) if rows else None

            jobs, rows = wait_for(done, 1800, f"{studies} studies through the pipeline", every=0.5)
            end = max(ts(r["sent_at"]) for r in rows)
            inferred = max(ts(j["finished_at"]) for j in jobs)
            per_worker: Counter[str] = Counter()
            for j in jobs:
                for a in http.get(f"/api/jobs/{j['id']}").json()["attempt_history"]:
                    if a["outcome"] == "succeeded":
                        per_worker[topo.worker_name(attempt_pid(a["worker"])) or a["worker"]] += 1
            seconds = (end - t0).total_seconds()
            return {"workers": workers, "studies": studies, "seconds": seconds,
                    "per_minute": studies * 60 / seconds, "inference_done": (inferred - t0).total_seconds(),
                    "objects": len(rows), "per_worker": dict(per_worker)}
    finally:
        topo.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=12, help="studies per run (default 12)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run (default 1 2)")
    p.add_argument("--via-orthanc", action="store_true", help="send to Orthanc, which auto-routes to the node")
    p.add_argument("--keep", action="store_true", help="keep the logs (printed path)")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="interop-bench-pipeline-"))
    results: list[dict[str, Any]] = []
    try:
        with peers() as (pg, redis):
            print(f"{'workers':>7} {'studies':>7} {'seconds':>8} {'studies/min':>12} {'inference done':>15} "
                  f"{'objects to PACS':>16}  attempts per worker", flush=True)
            for n in a.workers:
                r = run(n, a.studies, a.via_orthanc, pg, redis, work)
                results.append(r)
                print(f"{r['workers']:>7} {r['studies']:>7} {r['seconds']:>7.1f}s {r['per_minute']:>12.2f} "
                      f"{r['inference_done']:>14.1f}s {r['objects']:>16}  {r['per_worker']}", flush=True)
        by = {r["workers"]: r for r in results}
        if 1 in by and 2 in by:
            print(f"two workers / one: {by[2]['per_minute'] / by[1]['per_minute']:.2f}x studies per minute "
                  f"({by[1]['per_minute']:.2f} -> {by[2]['per_minute']:.2f}); inference alone "
                  f"{by[1]['inference_done'] / by[2]['inference_done']:.2f}x")
    finally:
        if a.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
