"""The instance store against SQLite and PostgreSQL: ingest, duplicates, policies, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from interop.errors import DatasetMismatch, DuplicateInstance, UndecodableDataset
from interop.store.blobs import FileBlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.store.models import Instance, Series, Study
from tests.support import sample_file


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> InstanceStore:
    db = Database(database_url)
    db.migrate()
    return InstanceStore(db, FileBlobStore(tmp_path / "blobs"))


def _copy(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / f"in-{generate_uid()}.dcm"
    shutil.copyfile(src, dest)
    return dest


def _count(store: InstanceStore, model: type) -> int:
    with store.db.reading() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_ingest_stores_file_and_index(store: InstanceStore, tmp_path: Path) -> None:
    src = sample_file("CT_small.dcm")
    result = store.ingest(_copy(src, tmp_path), source="test")
    assert result.status == 0 and result.stored
    (inst,) = store.locate(result.study_uid)
    with store.blobs.open(inst.blob_key) as fp:
        assert dcmread(fp).SOPInstanceUID == dcmread(src).SOPInstanceUID
    with store.db.reading() as s:
        study = s.scalars(select(Study)).one()
        assert study.patient_name == "CompressedSamples^CT1"
        assert study.patient_name_search == "^COMPRESSEDSAMPLES^CT1^"
        assert s.scalars(select(Series.modality)).one() == "CT"


def test_ingest_same_instance_twice_keeps_one_copy(store: InstanceStore, tmp_path: Path) -> None:
    src = sample_file("CT_small.dcm")
    first = store.ingest(_copy(src, tmp_path), source="test")
    again = store.ingest(_copy(src, tmp_path), source="test")
    assert (first.stored, again.stored) == (True, False)
    assert again.status == 0x0000
    assert _count(store, Instance) == 1
    assert len(list(store.blobs.iter_keys())) == 1


def _altered(src: Path, tmp_path: Path) -> Path:
    ds = dcmread(src)
    ds.StudyDescription = "changed payload, same SOP Instance UID"
    out = tmp_path / f"alt-{generate_uid()}.dcm"
    ds.save_as(out)
    return out


def test_different_payload_keep_first_answers_warning(store: InstanceStore, tmp_path: Path) -> None:
    src = sample_file("CT_small.dcm")
    store.ingest(_copy(src, tmp_path), source="test")
    result = store.ingest(_altered(src, tmp_path), source="test")
    assert result.status == 0xB006 and not result.stored
    (inst,) = store.locate(result.study_uid)
    with store.blobs.open(inst.blob_key) as fp:
        assert dcmread(fp).get("StudyDescription") != "changed payload, same SOP Instance UID"


def test_different_payload_overwrite_replaces(store: InstanceStore, tmp_path: Path) -> None:
    store.duplicate_policy = "overwrite"
    src = sample_file("CT_small.dcm")
    store.ingest(_copy(src, tmp_path), source="test")
    result = store.ingest(_altered(src, tmp_path), source="test")
    assert result.status == 0 and result.stored
    (inst,) = store.locate(result.study_uid)
    with store.blobs.open(inst.blob_key) as fp:
        assert dcmread(fp).StudyDescription == "changed payload, same SOP Instance UID"
    assert len(list(store.blobs.iter_keys())) == 1, "the replaced file must be deleted"


def test_different_payload_reject_refuses(store: InstanceStore, tmp_path: Path) -> None:
    store.duplicate_policy = "reject"
    src = sample_file("CT_small.dcm")
    store.ingest(_copy(src, tmp_path), source="test")
    with pytest.raises(DuplicateInstance) as err:
        store.ingest(_altered(src, tmp_path), source="test")
    assert err.value.dimse_status == 0x0111


def test_truncated_file_refused_and_nothing_stored(store: InstanceStore, tmp_path: Path) -> None:
    data = sample_file("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 5000])  # inside the pixel data
    with pytest.raises(UndecodableDataset) as err:
        store.ingest(cut, source="test")
    assert err.value.dimse_status == 0xC210
    assert not cut.exists(), "the store consumes the file it was given"
    assert _count(store, Instance) == 0 and not list(store.blobs.iter_keys())


def test_missing_sop_instance_uid_refused(store: InstanceStore, tmp_path: Path) -> None:
    ds = dcmread(sample_file("CT_small.dcm"))
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    path = tmp_path / "nouid.dcm"
    ds.save_as(path)
    with pytest.raises(DatasetMismatch) as err:
        store.ingest(path, source="test")
    assert err.value.dimse_status == 0xA900
    assert _count(store, Instance) == 0


def test_command_uid_mismatch_refused(store: InstanceStore, tmp_path: Path) -> None:
    with pytest.raises(DatasetMismatch):
        store.ingest(_copy(sample_file("CT_small.dcm"), tmp_path), source="test", expected_sop_uid="1.2.3.4")


def test_compressed_instance_stored_as_received(store: InstanceStore, tmp_path: Path) -> None:
    src = sample_file("JPEG2000.dcm")
    result = store.ingest(_copy(src, tmp_path), source="test")
    (inst,) = store.locate(result.study_uid)
    assert inst.transfer_syntax_uid == str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with store.blobs.open(inst.blob_key) as fp:
        assert fp.read() == src.read_bytes()
