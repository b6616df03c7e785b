"""FHIR over HTTP with 100k Observations: read, search and create latency, SQLite and PostgreSQL, beside a
bare FastAPI endpoint on the same server stack, measured in alternating blocks in the same run.

* ``interop``: ``interop serve`` with ``--n`` Observations (default 100,000) over 1,000 Patients, loaded
  before the server starts through ``FhirStore.transaction`` (1,000 entries a Bundle). Timed, one request at
  a time over one keep-alive connection (httpx): ``read`` ``GET /fhir/Observation/<id>``, ``search``
  ``GET /fhir/Observation?patient=…&code=…&date=ge…`` (one patient's glucose results), ``create``
  ``POST /fhir/Observation``. Routing rules and report recommendations are off (no app warm-up or
  embedding model loading on the server's CPU while it is timed); everything on the FHIR path is on,
  the audit trail included (an AuditEvent per request, written in batches by its own thread through the
  same store); ``--no-audit`` turns that off to see the FHIR path alone.
* ``bare``: a FastAPI app under the same uvicorn that answers ``GET /Observation/{id}`` with a stored
  Observation from a dict, and ``POST /Observation`` by parsing the JSON body and returning it (201): the
  floor of any FastAPI FHIR endpoint (HTTP, routing, JSON), no auth, no validation, no DB. This is the
  issue's reference for "create within 3x".
* ``bare+commit`` (context, not the issue's reference): the same bare app's ``POST /durable/Observation``,
  which also inserts the body as one row and commits it durably through the same database (SQLite in WAL
  mode with ``synchronous=FULL``, or the same PostgreSQL cluster), off the event loop as any blocking
  database call in FastAPI is: the floor of a create that is acknowledged only once it is on disk. On a
  busy disk an fsync alone can take milliseconds; this column shows what the disk cost in the same run.

Both servers run at once; each interaction is timed in ``--rounds`` blocks that alternate between them (the
order flips every round), so a noisy neighbour slows both sides of a ratio alike. Output: p50/p95 ms per
interaction and database, p50 ours / bare for read and create (and ours / bare+commit for create), and the
median of the per-round ratios.

    .venv/bin/python bench/fhir_http.py                   # --n 100000 --requests 300 --rounds 6 [--postgres]

``--in-process`` times ``POST /fhir/Observation`` through the ASGI app itself (no sockets, no uvicorn, no
client) beside the bare create in the same process, with the CPU time per request: what the server's own
code costs, away from loopback and client noise. ``--db`` points it at another database (a tmpfs file takes
the fsync out and leaves the CPU).

    .venv/bin/python bench/fhir_http.py --in-process [--db sqlite:////dev/shm/x.db] [--requests 1200]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request  # module level: FastAPI resolves the bare endpoint's annotations here
from fastapi.responses import Response

CODES = [("2345-7", "Glucose"), ("2160-0", "Creatinine"), ("2951-2", "Sodium"), ("2823-3", "Potassium"),
         ("1751-7", "Albumin"), ("1975-2", "Bilirubin"), ("777-3", "Platelets"), ("6768-6", "ALP"),
         ("1920-8", "AST"), ("5902-2", "PT")]
INTERACTIONS = ("read", "search", "create", "create+commit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def observation(patient: str, i: int) -> dict[str, Any]:
    # Observation i belongs to patient i % 1000; round r = i // 1000 gives each patient every code and month.
    r = i // 1000
    code, name = CODES[r % len(CODES)]
    day = 1 + r % 28
    month = 1 + (r // len(CODES)) % 12
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": name}]},
            "subject": {"reference": patient}, "effectiveDateTime": f"2026-{month:02d}-{day:02d}T08:00:00Z",
            "valueQuantity": {"value": round(random.uniform(1, 200), 1), "unit": "mg/dL",
                              "system": "http://unitsofmeasure.org", "code": "mg/dL"}}


def load(db_url: str, n: int) -> tuple[list[str], list[str]]:
    from interop.fhir.store import FhirStore
    from interop.store.db import Database

    db = Database(db_url)
    db.migrate()
    fhir = FhirStore(db)
    patients = []
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": {"resourceType": "Patient", "identifier": [{"value": f"P{p}"}]},
                         "request": {"method": "POST", "url": "Patient"}} for p in range(1000)]}
    for e in fhir.transaction(bundle)["entry"]:
        patients.append("/".join(e["response"]["location"].split("/")[:2]))
    ids: list[str] = []
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        entries = [{"resource": observation(patients[i % 1000], i), "request": {"method": "POST", "url": "Observation"}}
                   for i in range(start, min(n, start + 1000))]
        out = fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        ids += [e["response"]["location"].split("/")[1] for e in out["entry"]]
    print(f"  loaded {n} Observations in {time.perf_counter() - t0:.0f} s", flush=True)
    db.dispose()
    return patients, ids


def start(cmd: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{cmd} did not start: {log.read_text()[-2000:]}")


def timed(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=20)
    return f"{name:19} p50 {statistics.median(ms):6.2f} ms  p95 {q[18]:6.2f} ms"


@contextmanager
def interop_server(db_url: str, work: Path, n: int, audit: bool = True) -> Iterator[dict[str, Callable[[], None]]]:
    """``interop serve`` over a store loaded with ``n`` Observations; yields the timed calls by name."""
    patients, ids = load(db_url, n)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(INTEROP_DATA_DIR=str(work), INTEROP_DATABASE_URL=db_url, INTEROP_HTTP__PORT=str(port),
               INTEROP_HTTP__HOST="127.0.0.1", INTEROP_DICOM__PORT=str(free_port()), INTEROP_HL7__PORT=str(free_port()),
               INTEROP_ROUTING__RULES="[]", INTEROP_REPORTS__RECOMMENDATIONS="false", INTEROP_LOG_LEVEL="WARNING")
    if not audit:
        env["INTEROP_AUDIT__ENABLED"] = "false"
    proc = start([sys.executable, "-m", "interop", "serve"], env, f"http://127.0.0.1:{port}/healthz", work / "srv.log")
    token = subprocess.run([sys.executable, "-m", "interop", "token"], env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir",
                          headers={"Authorization": f"Bearer {token}"}) as http:

            def read() -> None:
                assert http.get(f"/Observation/{random.choice(ids)}").status_code == 200

            def search() -> None:
                r = http.get("/Observation", params={"patient": random.choice(patients),
                                                     "code": "http://loinc.org|2345-7", "date": "ge2026-06-01"})
                assert r.status_code == 200

            def create() -> None:
                assert http.post("/Observation", json=observation(random.choice(patients), 0)).status_code == 201

            calls = {"read": read, "search": search, "create": create}
            for fn in calls.values():  # warm-up
                timed(fn, 20)
            yield calls
    except Exception:
        print((work / "srv.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)


BARE = textwrap.dedent('''
    import json, sqlite3, sys, threading
    from fastapi import FastAPI
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool
    import uvicorn
    app = FastAPI()
    lock = threading.Lock()
    if sys.argv[2].startswith("postgresql"):
        import psycopg
        db = psycopg.connect(sys.argv[2])
        db.execute("CREATE TABLE IF NOT EXISTS bare_docs (id serial PRIMARY KEY, body text)")
        db.commit()
        INSERT = "INSERT INTO bare_docs (body) VALUES (%s)"
    else:
        db = sqlite3.connect(sys.argv[2], check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS bare_docs (id INTEGER PRIMARY KEY, body TEXT)")
        db.commit()
        INSERT = "INSERT INTO bare_docs (body) VALUES (?)"
    def commit(text):
        with lock:
            db.execute(INSERT, (text,))
            db.commit()
    doc = json.dumps({"resourceType": "Observation", "id": "x", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                      "subject": {"reference": "Patient/1"}, "valueQuantity": {"value": 5.4, "unit": "mg/dL"}})
    store = {str(i): doc for i in range(100000)}
    @app.get("/Observation/{id}")
    def read(id: str) -> Response:
        return Response(store.get(id, doc), media_type="application/fhir+json")
    @app.post("/Observation")
    async def create(request: Request) -> Response:
        body = json.loads(await request.body())
        return Response(json.dumps(body), status_code=201, media_type="application/fhir+json")
    @app.post("/durable/Observation")
    async def create_durable(request: Request) -> Response:
        body = json.loads(await request.body())
        text = json.dumps(body)
        await run_in_threadpool(commit, text)
        return Response(text, status_code=201, media_type="application/fhir+json")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
''')


@contextmanager
def bare_server(work: Path, db: str) -> Iterator[dict[str, Callable[[], None]]]:
    """The bare app; ``db`` (a SQLite file or a PostgreSQL conninfo) is where ``bare+commit`` commits."""
    port = free_port()
    script = work / "bare.py"
    script.write_text(BARE)
    proc = start([sys.executable, str(script), str(port), db], dict(os.environ), f"http://127.0.0.1:{port}/docs",
                 work / "bare.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:

            def read() -> None:
                assert http.get(f"/Observation/{random.randrange(100000)}").status_code == 200

            def create() -> None:
                assert http.post("/Observation", json=observation("Patient/1", 0)).status_code == 201

            def create_durable() -> None:
                assert http.post("/durable/Observation", json=observation("Patient/1", 0)).status_code == 201

            calls = {"read": read, "create": create, "create+commit": create_durable}
            for fn in calls.values():
                timed(fn, 20)
            yield calls
    finally:
        proc.terminate()
        proc.wait(timeout=30)


#: The ratios reported: (ours, bare's) interaction.
PAIRS = (("read", "read"), ("create", "create"), ("create", "create+commit"))


def alternate(ours: dict[str, Callable[[], None]], bare: dict[str, Callable[[], None]], requests: int,
              rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[tuple[str, str], list[float]]]:
    """Each interaction in ``rounds`` blocks, ours and bare's in turn (who goes first flips each round).
    Returns all times of ours, all of bare's, and per pair of :data:`PAIRS` the per-round p50 ratios."""
    per = max(1, requests // rounds)
    mine: dict[str, list[float]] = {k: [] for k in ours}
    theirs: dict[str, list[float]] = {k: [] for k in bare}
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in PAIRS}
    for r in range(rounds):
        block: dict[tuple[str, str], list[float]] = {}
        for k in INTERACTIONS:
            sides = [("ours", ours), ("bare", bare)] if r % 2 == 0 else [("bare", bare), ("ours", ours)]
            for side, calls in sides:
                if k in calls:
                    block[(side, k)] = timed(calls[k], per)
        for (side, k), ms in block.items():
            (mine if side == "ours" else theirs)[k] += ms
        for a, b in PAIRS:
            ratios[(a, b)].append(statistics.median(block[("ours", a)]) / statistics.median(block[("bare", b)]))
    return mine, theirs, ratios


def postgres(work: Path) -> tuple[str, Any]:
    import glob
    import pwd

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w",
                             "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    subprocess.run(prefix + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                             "bench"], check=True, capture_output=True)

    def stop() -> None:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench", stop


def in_process(db_url: str | None, requests: int, rounds: int) -> None:
    """``POST /fhir/Observation`` through the ASGI app (the node not started: no listeners, no background
    loops, no audit writer; the audit middleware still makes each event), against the bare create in the
    same process, in alternating blocks."""
    import asyncio
    import json

    work = Path(tempfile.mkdtemp(prefix="bench-fhir-asgi-"))
    os.environ.update(INTEROP_DATA_DIR=str(work), INTEROP_ROUTING__RULES="[]",
                      INTEROP_REPORTS__RECOMMENDATIONS="false", INTEROP_LOG_LEVEL="WARNING")
    if db_url:
        os.environ["INTEROP_DATABASE_URL"] = db_url
    from interop.api import create_app
    from interop.config import Settings
    from interop.node import Node

    node = Node(Settings())
    node.db.migrate()
    app = create_app(node, manage_node=False)
    auth = f"Bearer {node.tokens.mint()}".encode()
    bare = FastAPI()

    @bare.post("/Observation")
    async def bare_create(request: Request) -> Response:
        body = json.loads(await request.body())
        return Response(json.dumps(body), status_code=201, media_type="application/fhir+json")

    async def call(asgi: Any, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        body = json.dumps(observation("Patient/p1", 0)).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/fhir+json"),
                             (b"content-length", str(len(body)).encode()), *headers],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "state": {}}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # no disconnect while the response is sent
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await asgi(scope, receive, send)
        assert status == [201], status

    async def block(asgi: Any, path: str, headers: list[tuple[bytes, bytes]], n: int) -> tuple[list[float], float]:
        ms = []
        cpu = time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            await call(asgi, path, headers)
            ms.append((time.perf_counter() - t0) * 1000)
        return ms, time.process_time() - cpu

    async def run() -> None:
        sides = {"ours": (app, "/fhir/Observation", [(b"authorization", auth)]), "bare": (bare, "/Observation", [])}
        for asgi, path, headers in sides.values():
            await block(asgi, path, headers, 50)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in sides}
        cpu = dict.fromkeys(sides, 0.0)
        per = max(1, requests // rounds)
        for r in range(rounds):
            for side in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
                ms, spent = await block(*sides[side], per)
                times[side] += ms
                cpu[side] += spent
        for side, ms in times.items():
            print(f"  {summary(side + ' create', ms)}  cpu {cpu[side] / len(ms) * 1000:.3f} ms/request", flush=True)
        print(f"  create p50 ours / bare (in process): "
              f"{statistics.median(times['ours']) / statistics.median(times['bare']):.1f}", flush=True)

    print(f"in process, {node.settings.db_url}:", flush=True)
    try:
        asyncio.run(run())
    finally:
        node.db.dispose()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="Observations stored before timing")
    ap.add_argument("--requests", type=int, default=300, help="timed requests per interaction and server")
    ap.add_argument("--rounds", type=int, default=6, help="alternating blocks the requests are split into")
    ap.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL cluster")
    ap.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL (with --postgres)")
    ap.add_argument("--no-audit", action="store_true", help="the server without its audit trail")
    ap.add_argument("--in-process", action="store_true", help="create through the ASGI app, no sockets")
    ap.add_argument("--db", help="with --in-process: the database URL (default: SQLite in a temporary folder)")
    a = ap.parse_args()
    random.seed(0)
    if a.in_process:
        in_process(a.db, a.requests, a.rounds)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-fhir-"))
    try:
        dbs = [] if a.no_sqlite else [("sqlite", f"sqlite:///{work / 'sqlite' / 'interop.db'}")]
        stops = []
        if a.postgres:
            url, stop = postgres(work)
            dbs.append(("postgres", url))
            stops.append(stop)
        try:
            for name, url in dbs:
                (work / name).mkdir(exist_ok=True)
                print(f"{name}:", flush=True)
                target = str(work / name / "bare.db") if name == "sqlite" else url.replace("+psycopg", "")
                with bare_server(work / name, target) as bare, \
                        interop_server(url, work / name, a.n, audit=not a.no_audit) as ours:
                    mine, theirs, ratios = alternate(ours, bare, a.requests, a.rounds)
                for k in ("read", "search", "create"):
                    print("  " + summary(k, mine[k]), flush=True)
                for k in theirs:
                    print("  " + summary(f"bare {k}", theirs[k]), flush=True)
                for ours_k, bare_k in PAIRS:
                    ratio = statistics.median(mine[ours_k]) / statistics.median(theirs[bare_k])
                    rs = ratios[(ours_k, bare_k)]
                    print(f"  {ours_k} p50 ours / bare {bare_k}: {ratio:.2f} (per-round median "
                          f"{statistics.median(rs):.2f}, range {min(rs):.2f}–{max(rs):.2f})", flush=True)
        finally:
            for stop in stops:
                stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
