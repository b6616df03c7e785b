"""The BlobStore contract, run against every backend: files on disk, and S3 (moto's S3 server, a real S3
protocol peer over HTTP; see tests/store/s3peer.py) with and without its local read cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from interop.store.blobs import BlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from tests.support import sample_file


def _spooled(store: BlobStore, data: bytes) -> Path:
    """A received file in the store's temp dir, as the ingest paths leave it."""
    path = store.temp_dir() / f"recv-{os.urandom(4).hex()}"
    path.write_bytes(data)
    return path


def _stored(store: BlobStore, data: bytes) -> str:
    key = store.new_key()
    store.put_file(_spooled(store, data), key)
    return key


def test_put_takes_the_file_and_open_reads_it_back(blob_store: BlobStore) -> None:
    data = os.urandom(300_000)
    src = _spooled(blob_store, data)
    key = blob_store.new_key()
    blob_store.put_file(src, key)
    assert not src.exists(), "put_file takes ownership of the received file"
    with blob_store.open(key) as f:
        assert f.read() == data
    assert blob_store.size(key) == len(data)
    assert list(blob_store.temp_dir().iterdir()) == []


@pytest.mark.parametrize("size", [0, 1, 1 << 20, (1 << 20) + 1, 12 << 20])
def test_range_reads_return_the_bytes_at_any_offset(blob_store: BlobStore, size: int) -> None:
    """Seek + read anywhere (the WADO frame path), including across the first MiB and in a multipart object."""
    data = os.urandom(size)
    key = _stored(blob_store, data)
    with blob_store.open(key) as f:
        for offset, n in [(0, 10), (size // 2, 4096), (max(0, size - 7), 100), (size, 5), (1 << 20, 3 << 20)]:
            f.seek(offset)
            assert f.tell() == offset
            assert f.read(n) == data[offset:offset + n], (offset, n)
        f.seek(0)
        assert f.read() == data


def test_same_key_twice_is_one_object(blob_store: BlobStore) -> None:
    key = blob_store.new_key()
    blob_store.put_file(_spooled(blob_store, b"first"), key)
    blob_store.put_file(_spooled(blob_store, b"first"), key)
    assert list(blob_store.iter_keys()) == [key]
    with blob_store.open(key) as f:
        assert f.read() == b"first"


def test_missing_key_is_file_not_found_and_delete_is_idempotent(blob_store: BlobStore) -> None:
    key = _stored(blob_store, b"gone soon")
    blob_store.delete(key)
    blob_store.delete(key)
    with pytest.raises(FileNotFoundError):
        blob_store.open(key)
    with pytest.raises(FileNotFoundError):
        blob_store.size(key)
    assert list(blob_store.iter_keys()) == []


def test_iter_keys_lists_what_is_stored(blob_store: BlobStore) -> None:
    keys = {_stored(blob_store, os.urandom(100)) for _ in range(5)}
    assert set(blob_store.iter_keys()) == keys


@pytest.mark.parametrize("key", ["", "../etc", "a/b", ".hidden"])
def test_bad_keys_are_refused(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        blob_store.open(key)


def test_clean_temp_removes_what_a_crash_left(blob_store: BlobStore) -> None:
    for i in range(3):
        (blob_store.temp_dir() / f"partial-{i}").write_bytes(b"half a data set")
    assert blob_store.clean_temp() >= 3
    assert list(blob_store.temp_dir().iterdir()) == []


def test_ping_passes_when_the_store_can_take_objects(blob_store: BlobStore) -> None:
    blob_store.ping()


def test_orphans_are_objects_no_index_row_points_at(blob_store: BlobStore, tmp_path: Path) -> None:
    """What ``interop store check`` lists: a stored object whose index row never committed (a crash between)."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    store = InstanceStore(db, blob_store)
    src = blob_store.temp_dir() / "in.dcm"
    shutil.copyfile(sample_file("CT_small.dcm"), src)
    result = store.ingest(src, source="test")
    stray = _stored(blob_store, b"uploaded, then the process died")
    assert store.orphan_blobs() == [stray]
    (inst,) = store.locate(result.study_uid)
    with blob_store.open(inst.blob_key) as f:
        assert dcmread(f).SOPInstanceUID == dcmread(sample_file("CT_small.dcm")).SOPInstanceUID
    db.dispose()


def test_ingest_twice_keeps_one_copy_and_compares_through_the_store(blob_store: BlobStore, tmp_path: Path) -> None:
    """A second copy under a stored UID is compared with the first (both read through ``open``) and dropped."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    store = InstanceStore(db, blob_store)
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for _ in range(2):
        src = blob_store.temp_dir() / f"in-{os.urandom(4).hex()}.dcm"
        ds.save_as(src)
        store.ingest(src, source="test")
    assert len(list(blob_store.iter_keys())) == 1
    db.dispose()
