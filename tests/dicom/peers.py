"""Talking to a running node the way real peers do: dcmtk's tools and pynetdicom as an SCU.

dcmtk is the real-world peer (every PACS and modality toolkit answers like it); pynetdicom is used where
a test needs exact control over what goes on the wire (truncated data sets, a held-open association)
or the exact status of each C-STORE.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import func, select

from interop.store.db import Database
from interop.store.dicomfile import dataset_layout
from interop.store.models import Instance, Series, Study
from tests.conftest import ServerProc
from tests.support import require_tool, sample_file

#: dcmtk leaves Nagle's algorithm on unless told (DESIGN.md, "Measuring on these machines").
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

#: storescu's option that proposes a file's own (compressed) transfer syntax (and the uncompressed ones).
STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}


def run_tool(args: list[str], *, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    require_tool(args[0])
    proc = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def echoscu(server: ServerProc, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_tool(["echoscu", "-v", "-aec", "INTEROP", *extra, "127.0.0.1", str(server.dicom_port)], timeout=30)


def storescu(server: ServerProc, *paths: Path | str, extra: Iterable[str] = ()) -> subprocess.CompletedProcess[str]:
    """``storescu -R`` (propose exactly what the files need, so SR/SEG go too) for files or folders."""
    args = ["storescu", "-v", "-R", "-aec", "INTEROP", *extra]
    if any(Path(p).is_dir() for p in paths):
        args += ["+sd", "+r"]
    return run_tool([*args, "127.0.0.1", str(server.dicom_port), *map(str, paths)])


def store_responses(output: str) -> list[str]:
    """The status words of every ``Received Store Response (...)`` line of ``storescu -v``."""
    return [
        line.split("Received Store Response (", 1)[1].rsplit(")", 1)[0]
        for line in output.splitlines()
        if "Received Store Response (" in line
    ]


def storescu_as_received(server: ServerProc, path: Path) -> subprocess.CompletedProcess[str]:
    """Send one file in its own transfer syntax (storescu proposes only uncompressed ones unless told)."""
    ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return storescu(server, path, extra=[STORESCU_TS_OPTION[ts]] if ts in STORESCU_TS_OPTION else [])


# -- pynetdicom SCU ----------------------------------------------------------------------------------------


def scu(ae_title: str = "PYSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


@contextmanager
def association(server: ServerProc, contexts: Iterable[tuple[str, list[str]]], ae_title: str = "PYSCU"
                ) -> Iterator[Association]:
    """An established association (released on exit) proposing ``(abstract syntax, transfer syntaxes)``."""
    ae = scu(ae_title)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="INTEROP")
    assert assoc.is_established, "association with the node was not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def contexts_for(*paths: Path) -> list[tuple[str, list[str]]]:
    seen: dict[str, list[str]] = {}
    for p in paths:
        ds = dcmread(p, stop_before_pixels=True)
        seen.setdefault(str(ds.SOPClassUID), [])
        ts = str(ds.file_meta.TransferSyntaxUID)
        if ts not in seen[str(ds.SOPClassUID)]:
            seen[str(ds.SOPClassUID)].append(ts)
    return list(seen.items())


def send_files(assoc: Association, *paths: Path, raw: bool = True) -> list[int]:
    """C-STORE each file; returns the status of each. ``raw`` streams the file's bytes as they are."""
    statuses = []
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = raw
    try:
        for p in paths:
            rsp = assoc.send_c_store(p)
            assert "Status" in rsp, f"no C-STORE response for {p} (association {assoc.is_established=})"
            statuses.append(int(rsp.Status))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    return statuses


def send(server: ServerProc, *paths: Path, ae_title: str = "PYSCU") -> list[int]:
    with association(server, contexts_for(*paths), ae_title) as assoc:
        return send_files(assoc, *paths)


# -- test data ---------------------------------------------------------------------------------------------


def fresh_instance(src: Path, dest_dir: Path, *, study_uid: str | None = None, series_uid: str | None = None,
                   **attrs: Any) -> Path:
    """A copy of ``src`` with a new SOP Instance UID and the given attributes. Given a study UID, the copy
    goes into a new series of that study unless a series UID is given too (a series belongs to one study)."""
    ds = dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if study_uid:
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid or generate_uid()
    elif series_uid:
        ds.SeriesInstanceUID = series_uid
    for k, v in attrs.items():
        setattr(ds, k, v)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def ct_small() -> Path:
    return sample_file("CT_small.dcm")


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (after preamble and file meta), as sent on the wire."""
    offset, _ = dataset_layout(path)
    with open(path, "rb") as fp:
        fp.seek(offset)
        return fp.read()


# -- the node's index ----------------------------------------------------------------------------------------


def database(server: ServerProc) -> Database:
    url = server.extra_env.get("INTEROP_DATABASE_URL") or f"sqlite:///{server.data_dir / 'interop.db'}"
    return Database(url)


@dataclass(frozen=True)
class StoredRow:
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    blob_path: Path
    dataset_offset: int
    calling_ae: str | None


def index(server: ServerProc) -> list[StoredRow]:
    """Every instance row of the node's index, with the path of its file."""
    db = database(server)
    try:
        with db.reading() as s:
            rows = s.execute(
                select(Instance, Series.series_uid, Study.study_uid)
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Instance.study_pk == Study.id)
            ).all()
            return [
                StoredRow(i.sop_uid, st, se, i.transfer_syntax_uid,
                          server.data_dir / "blobs" / "objects" / i.blob_key[:2] / i.blob_key,
                          i.dataset_offset, i.calling_ae)
                for i, se, st in rows
            ]
    finally:
        db.dispose()


def counts(server: ServerProc) -> tuple[int, int, int]:
    """(studies, series, instances) in the node's index."""
    db = database(server)
    try:
        with db.reading() as s:
            return tuple(  # type: ignore[return-value]
                int(s.scalar(select(func.count()).select_from(m)) or 0) for m in (Study, Series, Instance)
            )
    finally:
        db.dispose()


def blob_files(server: ServerProc) -> set[Path]:
    return {p for p in (server.data_dir / "blobs" / "objects").rglob("*") if p.is_file()}


def temp_files(server: ServerProc) -> list[Path]:
    return [p for p in (server.data_dir / "blobs" / "tmp").iterdir()]


def need_dcmtk() -> None:
    for tool in ("echoscu", "storescu", "findscu"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (tests/run.sh installs dcmtk)")
