"""Where one C-STORE's ingest time goes, without the network: ``InstanceStore.ingest`` step by step.

Builds a store (SQLite + files, as ``interop serve`` does) in a temporary folder, ingests ``--n`` copies of
CT_small.dcm (fresh UIDs) one after another, and prints the mean and median time of each step it finds. It
wraps the store's internals by name (``read_header``, ``check_complete``, ``_find``, ``_index``, ``put_file``,
...), times those that exist, and skips the rest, so it survives the hot path being reshaped; steps that are
not called any more print nothing.

    .venv/bin/python bench/ingest_breakdown.py [--n 300]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    a = ap.parse_args()

    from interop.store import instances as inst_mod
    from interop.store.blobs import FileBlobStore
    from interop.store.db import Database
    from interop.store.instances import InstanceStore

    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrap(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                times.setdefault(name, []).append(time.perf_counter() - t)

        return wrap

    work = Path(tempfile.mkdtemp(prefix="ingest-breakdown-"))
    try:
        db = Database(f"sqlite:///{work / 'interop.db'}")
        db.migrate()
        blobs = FileBlobStore(work / "blobs")
        store = InstanceStore(db, blobs)
        src = work / "src"
        src.mkdir()
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        for i in range(a.n):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(src / f"{i}.dcm", enforce_file_format=True)

        # Time whichever of these steps the store has today (it changes as the hot path is tuned).
        module_steps = {
            "read_header": "read_header (parse the indexed attributes)",
            "check_complete": "check_complete (walk every element)",
        }
        store_steps = {
            "_find": "_find (duplicate look-up, SELECT)",
            "_index": "_index (index rows; commit = WAL fsync)",
            "_study_pk": "  _study_pk (inside _index)",
            "_series_pk": "  _series_pk (inside _index)",
        }
        for attr, label in module_steps.items():
            if hasattr(inst_mod, attr):
                setattr(inst_mod, attr, timed(label, getattr(inst_mod, attr)))
        for attr, label in store_steps.items():
            if hasattr(store, attr):
                setattr(store, attr, timed(label, getattr(store, attr)))
        blobs.put_file = timed("put_file (fsync file, rename, fsync dir)", blobs.put_file)  # type: ignore[method-assign]

        incoming = blobs.temp_dir() / "incoming.dcm"
        for i in range(a.n):
            shutil.copyfile(src / f"{i}.dcm", incoming)
            t = time.perf_counter()
            store.ingest(incoming, source="dimse", calling_ae="BENCH")
            times.setdefault("ingest, all of it", []).append(time.perf_counter() - t)
        db.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{a.n} x CT_small.dcm, one after another:")
    for name, v in times.items():
        print(f"  {name:48s} mean {1000 * statistics.mean(v):6.2f} ms   median {1000 * statistics.median(v):6.2f} ms")


if __name__ == "__main__":
    main()
