"""FHIR over HTTP with 100k Observations: read, search and create latency, SQLite and PostgreSQL, beside a
bare FastAPI endpoint on the same server stack.

* ``interop``: ``interop serve`` with ``--n`` Observations (default 100,000) over 1,000 Patients, loaded
  before the server starts through ``FhirStore.transaction`` (1,000 entries a Bundle). Timed, one request at
  a time over one keep-alive connection (httpx): ``read`` ``GET /fhir/Observation/<id>``, ``search``
  ``GET /fhir/Observation?patient=…&code=…&date=ge…`` (one patient's glucose results), ``create``
  ``POST /fhir/Observation``.
* ``bare``: a FastAPI app under the same uvicorn that answers ``GET /Observation/{id}`` with a stored
  Observation from a dict, and ``POST /Observation`` by parsing the JSON body and returning it (201): the
  floor of any FastAPI FHIR endpoint (HTTP, routing, JSON), no auth, no validation, no DB.

Output: p50/p95 ms per interaction and database, and p50 ours / bare for read and create.

    .venv/bin/python bench/fhir_http.py                   # --n 100000 --requests 300 [--postgres]
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
from pathlib import Path
from typing import Any

import httpx

CODES = [("2345-7", "Glucose"), ("2160-0", "Creatinine"), ("2951-2", "Sodium"), ("2823-3", "Potassium"),
         ("1751-7", "Albumin"), ("1975-2", "Bilirubin"), ("777-3", "Platelets"), ("6768-6", "ALP"),
         ("1920-8", "AST"), ("5902-2", "PT")]


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


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=20)
    return f"{name:8} p50 {statistics.median(ms):6.2f} ms  p95 {q[18]:6.2f} ms"


def run_interop(db_url: str, work: Path, n: int, requests: int) -> dict[str, list[float]]:
    patients, ids = load(db_url, n)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(INTEROP_DATA_DIR=str(work), INTEROP_DATABASE_URL=db_url, INTEROP_HTTP__PORT=str(port),
               INTEROP_HTTP__HOST="127.0.0.1", INTEROP_DICOM__PORT=str(free_port()), INTEROP_HL7__PORT=str(free_port()),
               INTEROP_ROUTING__RULES="[]", INTEROP_LOG_LEVEL="WARNING")
    proc = start([sys.executable, "-m", "interop", "serve"], env, f"http://127.0.0.1:{port}/healthz", work / "srv.log")
    token = subprocess.run([sys.executable, "-m", "interop", "token"], env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir",
                          headers={"Authorization": f"Bearer {token}"}) as http:
            for _ in range(20):  # warm-up
                http.get(f"/Observation/{random.choice(ids)}")

            def read() -> None:
                assert http.get(f"/Observation/{random.choice(ids)}").status_code == 200

            def search() -> None:
                r = http.get("/Observation", params={"patient": random.choice(patients),
                                                     "code": "http://loinc.org|2345-7", "date": "ge2026-06-01"})
                assert r.status_code == 200

            def create() -> None:
                assert http.post("/Observation", json=observation(random.choice(patients), 0)).status_code == 201

            return {"read": timed(read, requests), "search": timed(search, requests),
                    "create": timed(create, requests)}
    except Exception:
        print((work / "srv.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)


BARE = textwrap.dedent('''
    import json, sys
    from fastapi import FastAPI
    from fastapi import Request
    from fastapi.responses import Response
    import uvicorn
    app = FastAPI()
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
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
''')


def run_bare(work: Path, requests: int) -> dict[str, list[float]]:
    port = free_port()
    script = work / "bare.py"
    script.write_text(BARE)
    proc = start([sys.executable, str(script), str(port)], dict(os.environ), f"http://127.0.0.1:{port}/docs",
                 work / "bare.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(20):
                http.get("/Observation/1")
            read = timed(lambda: http.get(f"/Observation/{random.randrange(100000)}"), requests)
            create = timed(lambda: http.post("/Observation", json=observation("Patient/1", 0)), requests)
            return {"read": read, "create": create}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="Observations stored before timing")
    ap.add_argument("--requests", type=int, default=300, help="timed requests per interaction")
    ap.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL cluster")
    a = ap.parse_args()
    random.seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench-fhir-"))
    try:
        bare = run_bare(work, a.requests)
        print("bare FastAPI:", flush=True)
        print("  " + summary("read", bare["read"]), "(dict lookup)", flush=True)
        print("  " + summary("create", bare["create"]), "(parse the body, return it)", flush=True)
        dbs = [("sqlite", f"sqlite:///{work / 'sqlite' / 'interop.db'}")]
        stops = []
        if a.postgres:
            url, stop = postgres(work)
            dbs.append(("postgres", url))
            stops.append(stop)
        try:
            for name, url in dbs:
                (work / name).mkdir(exist_ok=True)
                print(f"{name}:", flush=True)
                res = run_interop(url, work / name, a.n, a.requests)
                for k, v in res.items():
                    print("  " + summary(k, v), flush=True)
                for k in ("read", "create"):
                    ratio = statistics.median(res[k]) / statistics.median(bare[k])
                    print(f"  {k} p50 ours/bare: {ratio:.2f}", flush=True)
        finally:
            for stop in stops:
                stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
