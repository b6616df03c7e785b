"""The worklist with 1,000 pending AI results: page load and case-to-case navigation in headless Chromium.

* Node: ``interop serve`` on its own data directory (SQLite), routing and report recommendations off (nothing
  else runs on the CPU while it is timed). ``--images`` copies of the chest CR RG1_UNCI (1955 x 1841, 7 MB
  each), each its own patient and study, stored by ``storescu`` from an archive AE; then ``--n`` pending
  cxr_triage results inserted as rows (tests/ui/seed.py: ``jobs`` + ``job_results`` + ``reports``, five
  findings with the model's codes and thresholds, heat-maps on the radiograph's grid in the blob store,
  recommendations from our guidance with their sources, the report text, the study's Patient and
  ImagingStudy), spread over two days, every ninth one stat.
* Browser: Debian's Chromium through playwright-core (bench/worklist.mjs), 1920 x 1080, a radiologist's token
  injected as a finished SMART sign-in. The numbers are the page's own User Timing entries:

  - *worklist load*: navigation start to the first rows of the list painted (``worklist-rendered``), a fresh
    navigation each time after one warm-up (the page's files come from the browser cache, as they do for a
    reader who opens the worklist again; the data is fetched each time), each once the previous page's
    look-ahead (the first case, loaded as soon as the list shows) has finished;
  - *case to case, reading*: key ``j`` to the frame after the next case is shown with its rendered image and
    heat-map overlay (``case-shown``), the reader having stayed on each case until the page had loaded the
    next one ahead (it does so as soon as a case shows);
  - *case to case, rushing*: the same with ``j`` pressed the moment a case shows (the look-ahead has had no
    time: this is the cost of fetching, rendering and decoding a case).

  Images are fetched at the viewport the stage needs (``viewport=1024,1024`` here); rendered frames carry an
  ETag and ``Cache-Control: private, max-age=300``, so a case seen before comes from the browser's cache; with
  ``--images`` above the page's picture cache every new case still fetches (and the server renders) its own.

    .venv/bin/python bench/worklist.py                  # --n 1000 --images 32 --loads 20 --cases 60 --rush 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import ServerProc  # noqa: E402
from tests.ui.seed import cxr_copies, fhir_context, put_arrays, seed_reports  # noqa: E402

FINDINGS = ["cardiomegaly", "edema", "effusion", "pneumothorax", "consolidation"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:28s} no samples"
    return (f"{name:28s} n={len(values):4d}  median {statistics.median(values):7.1f} ms  "
            f"p95 {percentile(values, 0.95):7.1f} ms  max {max(values):7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="pending results")
    ap.add_argument("--images", type=int, default=32, help="distinct radiographs they lie on")
    ap.add_argument("--loads", type=int, default=20, help="timed page loads")
    ap.add_argument("--cases", type=int, default=60, help="timed case-to-case steps while reading")
    ap.add_argument("--rush", type=int, default=30, help="timed case-to-case steps without waiting")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()
    for tool in ("storescu", "node"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")

    root = Path(tempfile.mkdtemp(prefix="interop-bench-worklist-"))
    srv = ServerProc(data_dir=root / "node", extra_env={
        "INTEROP_ROUTING__RULES": "[]", "INTEROP_REPORTS__RECOMMENDATIONS": "false",
        "INTEROP_JOBS__PREWARM": "false"})
    try:
        srv.start()
        started = time.monotonic()
        folder = root / "dicom"
        folder.mkdir()
        files, images = cxr_copies(args.images, folder)
        subprocess.run(["storescu", "-aet", "ARCHIVE", "-aec", "INTEROP", "127.0.0.1", str(srv.dicom_port),
                        *map(str, files)], check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
        for f in files:
            f.unlink()
        with srv.client() as http:
            context = fhir_context(http, images, timeout=120)
        arrays = put_arrays(srv.data_dir, images[0].rows, images[0].columns, FINDINGS)
        ids = seed_reports(f"sqlite:///{srv.data_dir / 'interop.db'}", images, arrays, args.n, context, stat_every=9)
        print(f"seeded {len(ids)} pending results on {args.images} radiographs in {time.monotonic() - started:.1f} s")
        token = subprocess.run([sys.executable, "-m", "interop", "token", "--subject", "drjane", "--scope",
                                "openid fhirUser user/*.rs user/DiagnosticReport.rus", "--name", "Jane Doe", "--role",
                                "radiologist"], env=srv.env, capture_output=True, text=True)
        if token.returncode != 0:  # an interop token without --name/--role
            token = subprocess.run([sys.executable, "-m", "interop", "token", "--scope", "user/*.rs"],
                                   env=srv.env, capture_output=True, text=True, check=True)
        with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {token.stdout.strip()}"}) as h:
            api = {path: [] for path in ("/api/reports?status=preliminary&limit=100", "/api/worklist/counts")}
            for _ in range(20):
                for path, times in api.items():
                    t0 = time.perf_counter()
                    h.get(path).raise_for_status()
                    times.append((time.perf_counter() - t0) * 1000)
        config = {"base": srv.base_url, "token": token.stdout.strip(), "loads": args.loads, "cases": args.cases,
                  "rush": args.rush}
        out = subprocess.run(["node", str(REPO / "bench" / "worklist.mjs"), json.dumps(config)], capture_output=True,
                             text=True, timeout=1800)
        line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"bench/worklist.mjs gave no result:\n{out.stdout}\n{out.stderr}")
        result = json.loads(line.removeprefix("RESULT "))
        if result["errors"]:
            print("page errors:", *result["errors"], sep="\n  ")
        print(f"{args.n} pending results; the list shows {result['rows']} rows at first (more load on scroll)")
        for path, times in api.items():
            print(summary(f"GET {path.split('?')[0]}", times))
        print(summary("worklist load", result["loads"]))
        phases = result["phases"]
        if phases:
            def med(key: str) -> float:
                return statistics.median(p[key] for p in phases if p[key] is not None)

            print(f"  of which (medians, ms from navigation start): page answered {med('html'):.0f}, scripts "
                  f"running {med('scripts'):.0f}, session {med('session'):.0f}, list asked {med('listAsked'):.0f}, "
                  f"list answered {med('listAnswered'):.0f}, rows painted {med('rendered'):.0f}")
        print(summary("case to case, reading", result["read"]))
        print(summary("case to case, rushing", result["rush"]))
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
        return 0
    finally:
        srv.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"data kept in {root}")


if __name__ == "__main__":
    raise SystemExit(main())
