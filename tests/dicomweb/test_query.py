"""The matching engine QIDO-RS and C-FIND share (interop.store.query), against a SQLite index."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from interop.errors import InvalidInput
from interop.store.blobs import FileBlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.store.query import Level, parse_query, run_query


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, dicomdir_all: list[Path]) -> InstanceStore:
    root = tmp_path_factory.mktemp("query")
    db = Database(f"sqlite:///{root / 'index.db'}")
    db.migrate()
    s = InstanceStore(db, FileBlobStore(root / "blobs"))
    for i, p in enumerate(dicomdir_all):
        copy = root / f"in-{i}.dcm"
        shutil.copyfile(p, copy)
        s.ingest(copy, source="test")
    return s


def _find(store: InstanceStore, level: Level, **params: str) -> list[str]:
    q = parse_query(level, list(params.items()))
    key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
    with store.db.reading() as s:
        return [str(ds[key].value) for ds in run_query(s, q, header_reader=store.read_header_dataset)]


def _expected(files: list[Path], key: str, pred: object) -> set[str]:
    out = set()
    for p in files:
        ds = dcmread(p, stop_before_pixels=True)
        if pred(ds):  # type: ignore[operator]
            out.add(str(ds[key].value))
    return out


def test_query_date_range_bounds_are_inclusive(store: InstanceStore, dicomdir_all: list[Path]) -> None:
    got = set(_find(store, "STUDY", StudyDate="19950903-20010101"))
    assert got == _expected(dicomdir_all, "StudyInstanceUID", lambda ds: "19950903" <= ds.StudyDate <= "20010101")
    assert set(_find(store, "STUDY", StudyDate="20030505-")) == _expected(
        dicomdir_all, "StudyInstanceUID", lambda ds: ds.StudyDate >= "20030505")


def test_query_person_name_case_wildcard_and_fuzzy(store: InstanceStore) -> None:
    peter = set(_find(store, "STUDY", PatientName="Doe^Peter"))
    assert peter and set(_find(store, "STUDY", PatientName="DOE^PETER")) == peter
    assert set(_find(store, "STUDY", PatientName="D*^Pet*")) == peter
    assert set(_find(store, "STUDY", PatientName="peter doe", fuzzymatching="true")) == peter
    assert _find(store, "STUDY", PatientName="eter", fuzzymatching="true") == []


def test_query_modalities_in_study_and_uid_lists(store: InstanceStore, dicomdir_all: list[Path]) -> None:
    assert set(_find(store, "STUDY", ModalitiesInStudy="CR\\MR")) == _expected(
        dicomdir_all, "StudyInstanceUID", lambda ds: ds.Modality in ("CR", "MR"))
    some = sorted(_find(store, "SERIES"))[:3]
    assert sorted(_find(store, "SERIES", SeriesInstanceUID=",".join(some))) == some


def test_query_limit_offset_and_order_are_stable(store: InstanceStore) -> None:
    everything = _find(store, "IMAGE")
    assert len(everything) == 31
    paged = [u for off in range(0, 31, 5) for u in _find(store, "IMAGE", limit="5", offset=str(off))]
    assert paged == everything


def test_query_includefield_reads_the_header_and_keep_empty_pads(store: InstanceStore) -> None:
    q = parse_query("IMAGE", [("PatientID", "77654033"), ("includefield", "Manufacturer")])
    with store.db.reading() as s:
        results = run_query(s, q, header_reader=store.read_header_dataset)
        padded = run_query(s, parse_query("STUDY", [], strict=False), keywords=["PatientID", "InstitutionName"],
                           header_reader=store.read_header_dataset, keep_empty=True)
    assert results and all("Manufacturer" in ds for ds in results)
    assert all("InstitutionName" in ds and "PatientID" in ds for ds in padded)


def test_query_refuses_unknown_and_unsupported_keys_unless_lenient(store: InstanceStore) -> None:
    for params in ([("Bogus", "1")], [("SOPInstanceUID", "1.2")], [("InstitutionName", "x")], [("limit", "-1")]):
        with pytest.raises(InvalidInput):
            parse_query("STUDY", params)
    lenient = parse_query("STUDY", [("SOPInstanceUID", "1.2")], strict=False)
    assert lenient.match == {}
