"""Ready-to-result latency of the AI apps through the node, beside the same app run cold by hand.

* ``node``: ``interop serve`` on its defaults (SQLite, local executor, one slot with a pre-warmed app process)
  and the demo routing rules. For each round a fresh study (new UIDs) goes in by ``storescu`` (or a fresh
  patient's lab set by MLLP for ``lab_severity``), and we read from the node's database: when the study became
  ready (or the lab set arrived), when the job's attempt started, when it finished, and the app's own
  ``timing.inference_seconds``. Rounds are sequential: this is latency, not throughput.
* ``cold``: the same app on the same input started by hand the way the SDK documents it
  (``python -m apps.<name> -i IN -o OUT -m MODEL``): process start, imports, graph, model, inference.

Output per app: medians (and p90) of ready→start, ready→result, the app's inference time, and the cold run's
wall time; the ratio node ready→result / cold run; and the results loop in the node's own store: ready→SR
stored (imaging apps), ready→FHIR report written, ready→every object it owes delivered (heat-maps, SEG).

    .venv/bin/python bench/job_latency.py --apps cxr_triage lab_severity --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(value: str | None) -> dt.datetime:
    assert value is not None
    t = dt.datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


# -- inputs -------------------------------------------------------------------------------------------------


def fresh_cxr(dest: Path, n: int) -> list[Path]:
    """RG1_UNCI.dcm (a real chest CR) with new Study/Series/SOP UIDs: a new study for the node."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"BENCH-CXR-{n}"
    out = dest / f"cxr{n}.dcm"
    ds.save_as(out)
    return [out]


def fresh_mr(dest: Path, n: int) -> list[Path]:
    from apps.mr_segmentation import make_demo_series

    folder = dest / f"mr{n}"
    make_demo_series.main(["--out", str(folder), "--step", "2", "--patient-id", f"BENCH-MR-{n}"])
    return sorted(folder.rglob("*.dcm"))


def lab_message(n: int) -> str:
    from tests.test_pipeline import liver_panel

    return liver_panel(f"BENCH-{n}-{time.time_ns()}", f"BENCH-LAB-{n}", dt.datetime.now(dt.UTC))


# -- runs -------------------------------------------------------------------------------------------------------


def send_dicom(port: int, files: list[Path]) -> None:
    subprocess.run(["storescu", "-aec", "INTEROP", "127.0.0.1", str(port), *map(str, files)], check=True,
                   capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})


def send_hl7(port: int, message: str, tmp: Path) -> None:
    path = tmp / "m.hl7"
    path.write_bytes(message.encode())
    exe = Path(sys.executable).with_name("mllp_send")
    subprocess.run([str(exe), "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"], check=True,
                   capture_output=True)


def wait_job(db: Path, after_id: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as c:
            c.row_factory = sqlite3.Row
            row = c.execute("SELECT * FROM jobs WHERE id > ? AND state IN ('succeeded','failed','dead') "
                            "ORDER BY id LIMIT 1", (after_id,)).fetchone()
            if row is not None:
                job = dict(row)
                att = c.execute("SELECT started_at FROM job_attempts WHERE job_id=? ORDER BY number LIMIT 1",
                                (job["id"],)).fetchone()
                res = c.execute("SELECT content FROM job_results WHERE job_id=?", (job["id"],)).fetchone()
                ev = c.execute("SELECT at FROM study_events WHERE study_uid=? AND kind='ready' ORDER BY id DESC "
                               "LIMIT 1", (job["study_uid"],)).fetchone() if job["study_uid"] else None
                job["attempt_started"] = att[0]
                job["result"] = json.loads(res[0]) if res else None
                job["ready_at"] = ev[0] if ev else job["triggered_at"]
                return job
        time.sleep(0.05)
    raise TimeoutError("no job finished")


def wait_writebacks(db: Path, job_id: int, timeout: float = 120) -> dict[str, dt.datetime]:
    """When the job's report reached the node's own store: the SR (imaging apps) and the FHIR report, and when
    every object it owes (heat-maps, SEG) was delivered. Keys: sr, fhir, all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT kind, state, sent_at FROM writebacks WHERE job_id=? AND destination='local'",
                             (job_id,)).fetchall()
        if rows and all(state in ("sent", "dead") for _, state, _ in rows):
            if any(state == "dead" for _, state, _ in rows):
                raise RuntimeError(f"write-back of job {job_id} dead: {rows}")
            out = {kind: ts(at) for kind, _, at in rows if kind in ("sr", "fhir")}
            out["all"] = max(ts(at) for _, _, at in rows)
            return out
        time.sleep(0.05)
    raise TimeoutError(f"write-backs of job {job_id} not delivered")


def cold_run(app: str, in_dir: Path, out_dir: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"apps.{app}", "-i", str(in_dir), "-o", str(out_dir), "-m",
                    str(REPO / "apps" / app / "model")], check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - t0


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


def bench(app: str, rounds: int, work: Path) -> dict[str, Any]:
    data = work / f"node-{app}"
    http, dicom, mllp = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(INTEROP_DATA_DIR=str(data), INTEROP_HTTP__PORT=str(http), INTEROP_HTTP__HOST="127.0.0.1",
               INTEROP_DICOM__PORT=str(dicom), INTEROP_DICOM__HOST="127.0.0.1", INTEROP_HL7__PORT=str(mllp),
               INTEROP_HL7__HOST="127.0.0.1", INTEROP_STUDIES__QUIET_SECONDS="1", INTEROP_LOG_LEVEL="WARNING")
    with open(work / f"{app}-server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "interop", "serve"], env=env, cwd=work, stdout=log,
                                  stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    time.sleep(8)  # the spare app process finishes its imports
    db = data / "interop.db"
    to_start, to_result, inference, cold = [], [], [], []
    to_sr: list[float] = []
    to_report: list[float] = []
    to_all: list[float] = []
    last = 0
    try:
        for n in range(rounds):
            inputs = work / f"in-{app}-{n}"
            inputs.mkdir()
            if app == "lab_severity":
                send_hl7(mllp, lab_message(n), work)
            else:
                files = fresh_cxr(inputs, n) if app == "cxr_triage" else fresh_mr(inputs, n)
                send_dicom(dicom, files)
            job = wait_job(db, last)
            last = job["id"]
            if job["state"] != "succeeded":
                raise RuntimeError(f"{app} job {job['id']} {job['state']}: {job['error']}")
            ready = ts(job["ready_at"])
            to_start.append((ts(job["attempt_started"]) - ready).total_seconds())
            to_result.append((ts(job["finished_at"]) - ready).total_seconds())
            inference.append(float(job["result"]["timing"].get("inference_seconds", float("nan"))))
            sent = wait_writebacks(db, job["id"])
            to_report.append((sent["fhir"] - ready).total_seconds())
            to_all.append((sent["all"] - ready).total_seconds())
            if "sr" in sent:
                to_sr.append((sent["sr"] - ready).total_seconds())
            # The same input, cold, by hand.
            if app == "lab_severity":
                from apps.lab_severity.example_bundle import main as example

                with contextlib.redirect_stdout(io.StringIO()):
                    example(["--id", "1", "--out", str(inputs)])
            time.sleep(3)  # the node's spare process re-imports after each job; don't measure the cold run beside it
            cold.append(cold_run(app, inputs, work / f"out-{app}-{n}"))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"app": app, "rounds": rounds, "ready_to_start": to_start, "ready_to_result": to_result,
            "inference": inference, "cold": cold, "ready_to_sr": to_sr, "ready_to_report": to_report,
            "ready_to_all": to_all}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--apps", nargs="+", default=["cxr_triage", "mr_segmentation", "lab_severity"])
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="interop-bench-jobs-"))
    try:
        print(f"{'app':16} {'ready→start':>12} {'ready→result':>13} {'inference':>10} {'cold run':>9}  ratio  "
              f"{'ready→SR':>9} {'ready→report':>13} {'ready→all':>10}")
        keys = ("ready_to_start", "ready_to_result", "inference", "cold", "ready_to_sr", "ready_to_report",
                "ready_to_all")
        for app in a.apps:
            r = bench(app, a.rounds, work)
            med = {k: statistics.median(r[k]) if r[k] else float("nan") for k in keys}
            print(f"{app:16} {med['ready_to_start']:>11.3f}s {med['ready_to_result']:>12.3f}s "
                  f"{med['inference']:>9.3f}s {med['cold']:>8.2f}s  {med['ready_to_result'] / med['cold']:.2f}  "
                  f"{med['ready_to_sr']:>8.2f}s {med['ready_to_report']:>12.2f}s {med['ready_to_all']:>9.2f}s"
                  f"   (p90 ready→result {p90(r['ready_to_result']):.3f}s, n={a.rounds})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
