"""FHIR transaction Bundles from the HL7 lab feed: milliseconds per ``FhirStore.transaction`` on SQLite.

The 8-result metabolic panel (``tests/hl7v2/messages/oru_r01_cmp.hl7``) is mapped once per iteration to its
transaction Bundle (Patient and DiagnosticReport by conditional update, Observations by conditional create),
with a fresh MRN and order numbers each time so every transaction creates its resources, and applied inside
``Database.writing()`` (the caller commits, as the HL7 listener does); then the same Bundle is applied once
more (a re-sent message or result Bundle): every conditional create finds its resource and every
conditional update is a no-op, so nothing is written (checked: every entry answers 200 with version 1).
Output: mean/p50/p95 ms of the first and of the repeated application.

    .venv/bin/python bench/fhir_transaction.py              # --n 100 --warmup 10 (SQLite, commit included)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from interop.config import Hl7Settings
from interop.fhir.store import FhirStore
from interop.hl7v2.mapping import to_bundle
from interop.hl7v2.messages import mapping_options
from interop.hl7v2.parse import parse, read_header
from interop.store.db import Database

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "hl7v2" / "messages" / "oru_r01_cmp.hl7"


def message(raw: bytes, i: int) -> bytes:
    """The sample with its own MRN, placer/filler order numbers and control ID."""
    return (raw.replace(b"MRN483920", b"MRN%07d" % i)
               .replace(b"PLC-778812", b"PLC-%07d" % i)
               .replace(b"FIL-20261120-0457", b"FIL-%07d" % i)
               .replace(b"LAB20261120-0001", b"LAB-%07d" % i))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="timed transactions")
    ap.add_argument("--warmup", type=int, default=10, help="untimed transactions first")
    args = ap.parse_args()
    raw = SAMPLE.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    options = mapping_options(Hl7Settings())
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        db.migrate()
        fs = FhirStore(db)
        times: list[float] = []
        again: list[float] = []
        for i in range(args.warmup + args.n):
            data = message(raw, i)
            bundle = to_bundle(parse(data, read_header(data)), options).bundle
            for out in (times, again):
                t0 = time.perf_counter()
                with db.writing() as s:
                    response = fs.transaction(copy.deepcopy(bundle), session=s)
                if i >= args.warmup:
                    out.append((time.perf_counter() - t0) * 1000)
            etags = {e["response"]["status"] + " " + e["response"]["etag"] for e in response["entry"]}
            assert etags == {'200 OK W/"1"'}, etags  # the repeat wrote nothing
        db.engine.dispose()
    for name, ms in (("first", times), ("again", again)):
        ms.sort()
        p95 = ms[min(len(ms) - 1, int(round(0.95 * len(ms))) - 1)]
        print(f"{len(bundle['entry'])}-entry transaction, {name}, n={len(ms)}: mean {statistics.fmean(ms):.2f} ms, "
              f"p50 {statistics.median(ms):.2f} ms, p95 {p95:.2f} ms")


if __name__ == "__main__":
    main()
