"""The S3 backend against a real S3 protocol peer: moto's standalone S3 server, reached over HTTP by boto3
exactly as MinIO or AWS would be (tests/store/s3peer.py says what moto does and does not check).

What these tests hold the store to: uploads carry their SHA-256 (checked by S3, and in metadata for reads);
large objects go up in parts; reads go through a bounded cache, and an object too large for it is read by
ranges, so a header or one frame of a 40 MiB multi-frame instance costs a few MiB of GETs, not 40; a corrupt
cached copy or an object that doesn't match its checksum is never served; throttling is retried; S3 down is an
``OutOfResources`` (A700 / 503) with nothing stored; an unusable bucket stops start-up with one clear line.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from interop.config import S3Settings, Settings
from interop.dicomweb.pixels import frame_bytes, layout_of
from interop.store.s3 import S3BlobStore, StorageStartupError, StorageUnavailable
from tests.store.conftest import s3_store
from tests.store.s3peer import FlakyProxy, S3Peer
from tests.support import sample_file

_MiB = 1 << 20


class GetLog:
    """Every GetObject the store makes, with the bytes it brought (botocore's ``after-call`` event)."""

    def __init__(self, store: S3BlobStore) -> None:
        self.sizes: list[int] = []
        store.client.meta.events.register("after-call.s3.GetObject", self._record)

    def _record(self, parsed: dict[str, Any], **_: Any) -> None:
        self.sizes.append(int(parsed.get("ContentLength", 0)))

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    def clear(self) -> None:
        self.sizes.clear()


def _put(store: S3BlobStore, data: bytes) -> str:
    src = store.temp_dir() / f"in-{os.urandom(4).hex()}"
    src.write_bytes(data)
    key = store.new_key()
    store.put_file(src, key)
    return key


@pytest.fixture
def store(s3_peer: S3Peer, tmp_path: Path) -> S3BlobStore:
    return s3_store(s3_peer, tmp_path / "blobs", multipart_threshold_bytes=5 * _MiB, cache_bytes=64 * _MiB)


# -- writing ----------------------------------------------------------------------------------------------------


def test_upload_carries_its_sha256_checksum_and_metadata(store: S3BlobStore) -> None:
    data = os.urandom(200_000)
    key = _put(store, data)
    head = store.client.head_object(Bucket=store.bucket, Key=f"objects/{key}", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_large_object_goes_up_in_parts_each_with_a_checksum(store: S3BlobStore) -> None:
    data = os.urandom(12 * _MiB)
    key = _put(store, data)
    head = store.client.head_object(Bucket=store.bucket, Key=f"objects/{key}", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-2"), "8 MiB parts: a 12 MiB object is two"
    assert head["ChecksumSHA256"], "CompleteMultipartUpload carried the parts' SHA-256"
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    store.cache.discard(key)
    with store.open(key) as f:
        assert f.read() == data


def test_prefix_keeps_objects_apart(s3_peer: S3Peer, tmp_path: Path) -> None:
    store = s3_store(s3_peer, tmp_path / "blobs", prefix="/site-a/")
    key = _put(store, b"x")
    assert s3_peer.keys(store.bucket) == [f"site-a/objects/{key}"]
    assert list(store.iter_keys()) == [key]


# -- reading: cache and ranges ---------------------------------------------------------------------------------


def _multiframe(path: Path, frames: int) -> tuple[np.ndarray, int]:
    """A native 16-bit multi-frame CT of ``frames`` 512x512 frames; returns its pixels and the file size."""
    ds = dcmread(sample_file("CT_small.dcm"))
    pixels = np.random.default_rng(7).integers(0, 4096, size=(frames, 512, 512), dtype=np.uint16)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return pixels, path.stat().st_size


def test_header_and_one_frame_of_a_large_instance_cost_ranges_not_the_object(s3_peer: S3Peer, tmp_path: Path) -> None:
    """What WADO-RS does per request (pixels.layout_of, frame_bytes) reads a few MiB of a 40 MiB object."""
    store = s3_store(s3_peer, tmp_path / "blobs", cache_bytes=8 * _MiB)  # objects over 2 MiB are never cached
    src = store.temp_dir() / "mf.dcm"
    pixels, size = _multiframe(src, 80)
    key = store.new_key()
    store.put_file(src, key)
    assert size > 40 * _MiB
    gets = GetLog(store)

    layout = layout_of(store, key)
    assert layout is not None and layout.frames == 80
    assert gets.bytes <= 1 * _MiB, f"the header read fetched {gets.bytes} bytes"
    gets.clear()
    with store.open(key) as f:
        header = dcmread(f, stop_before_pixels=True)
    frame = frame_bytes(store, key, layout, 41, decode=False, header=header)
    assert frame == pixels[41].tobytes()
    assert gets.bytes <= 2 * _MiB + len(frame), f"header + one frame fetched {gets.bytes} bytes"
    assert store.cache.used_bytes == 0


def test_sequential_read_of_a_large_object_uses_growing_windows(s3_peer: S3Peer, tmp_path: Path) -> None:
    store = s3_store(s3_peer, tmp_path / "blobs", cache_bytes=0)
    data = os.urandom(40 * _MiB)
    key = _put(store, data)
    gets = GetLog(store)
    with store.open(key) as f:
        out = b"".join(iter(lambda: f.read(64 << 10), b""))
    assert out == data
    assert len(gets.sizes) <= 12, f"{len(gets.sizes)} GETs for one sequential read"


def test_cache_serves_repeat_reads_without_a_get(store: S3BlobStore) -> None:
    data = os.urandom(5 * _MiB)
    key = _put(store, data)
    gets = GetLog(store)
    with store.open(key) as f:
        assert f.read() == data
    assert gets.sizes == [], "a stored file moves into the cache: reading it back is local"
    store.cache.discard(key)
    for _ in range(3):
        with store.open(key) as f:
            assert f.read() == data
    assert len(gets.sizes) == 2, "first MiB, then the rest; later reads come from the cache"


def test_cache_stays_within_its_bound(s3_peer: S3Peer, tmp_path: Path) -> None:
    store = s3_store(s3_peer, tmp_path / "blobs", cache_bytes=4 * _MiB)
    blobs = {_put(store, os.urandom(600_000)): None for _ in range(12)}
    assert store.cache.used_bytes <= 4 * _MiB
    on_disk = sum(p.stat().st_size for p in store.cache.root.iterdir())
    assert on_disk == store.cache.used_bytes
    for key in blobs:  # evicted ones come back from S3
        with store.open(key) as f:
            assert len(f.read()) == 600_000
    assert store.cache.used_bytes <= 4 * _MiB


def test_corrupt_cached_copy_is_fetched_again_after_a_restart(s3_peer: S3Peer, tmp_path: Path) -> None:
    store = s3_store(s3_peer, tmp_path / "blobs", cache_bytes=64 * _MiB)
    data = os.urandom(300_000)
    key = _put(store, data)
    (cached,) = store.cache.root.iterdir()
    cached.write_bytes(b"\0" * len(data))  # a power loss left the renamed file without its data
    again = S3BlobStore(store.client, store.bucket, store.root, cache_bytes=64 * _MiB)
    with again.open(key) as f:
        assert f.read() == data
    assert [p.read_bytes() == data for p in again.cache.root.iterdir()] == [True]


def test_object_that_does_not_match_its_checksum_is_not_served(store: S3BlobStore) -> None:
    key = store.new_key()
    store.client.put_object(Bucket=store.bucket, Key=f"objects/{key}", Body=b"tampered",
                            Metadata={"sha256": hashlib.sha256(b"original").hexdigest()})
    with pytest.raises(StorageUnavailable, match="SHA-256"):
        store.open(key)
    assert store.cache.get(key) is None


# -- failures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def own_peer() -> Iterator[S3Peer]:
    """A peer this test may stop and start."""
    peer = S3Peer().start()
    yield peer
    peer.stop()


def test_throttling_is_retried_with_backoff(s3_peer: S3Peer, tmp_path: Path) -> None:
    proxy = FlakyProxy(s3_peer.port, failures=0)
    try:
        store = s3_store(s3_peer, tmp_path / "blobs", endpoint_url=proxy.endpoint_url, max_attempts=3)
        proxy.requests, proxy.failures = 0, 2
        key = _put(store, b"after two 503 SlowDown replies")
        assert proxy.requests == 3
        assert s3_peer.client().get_object(Bucket=store.bucket, Key=f"objects/{key}")["Body"].read() \
            == b"after two 503 SlowDown replies"

        proxy.requests, proxy.failures = 0, 10
        src = store.temp_dir() / "refused"
        src.write_bytes(b"never stored")
        with pytest.raises(StorageUnavailable, match="SlowDown"):
            store.put_file(src, store.new_key())
        assert proxy.requests == 3, "max_attempts bounds the retries"
        assert src.exists(), "a failed upload leaves the received file to the caller"
    finally:
        proxy.close()


def test_s3_down_is_out_of_resources_and_stores_nothing(own_peer: S3Peer, tmp_path: Path) -> None:
    store = s3_store(own_peer, tmp_path / "blobs", max_attempts=2, multipart_threshold_bytes=5 * _MiB)
    before = list(store.iter_keys())
    own_peer.stop()
    src = store.temp_dir() / "in"
    src.write_bytes(b"arrives while S3 is down")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as err:
        store.put_file(src, store.new_key())
    assert time.monotonic() - started < 10
    assert isinstance(err.value, OSError)
    assert (err.value.dimse_status, err.value.http_status) == (0xA700, 503)
    assert "can't connect" in err.value.message
    assert src.exists()
    big = store.temp_dir() / "big"
    big.write_bytes(os.urandom(6 * _MiB))
    with pytest.raises(StorageUnavailable, match="can't connect"):  # the multipart path
        store.put_file(big, store.new_key())
    with pytest.raises(OSError, match="can't connect"):
        store.ping()

    own_peer.start()
    store.ping()
    assert list(store.iter_keys()) == before
    key = store.new_key()
    store.put_file(src, key)
    assert list(store.iter_keys()) == [key]


def test_unusable_bucket_stops_start_up_with_one_line(s3_peer: S3Peer, tmp_path: Path) -> None:
    missing = S3Settings(**s3_peer.settings("no-such-bucket-here"))
    with pytest.raises(StorageStartupError, match="does not exist") as err:
        S3BlobStore.from_settings(missing, tmp_path / "a")
    assert "\n" not in str(err.value) and "no-such-bucket-here" in str(err.value)

    down = S3Settings(**s3_peer.settings("interop-x", endpoint_url="http://127.0.0.1:9", max_attempts=1))
    with pytest.raises(StorageStartupError, match="can't connect"):
        S3BlobStore.from_settings(down, tmp_path / "b")


def test_credentials_come_from_the_aws_chain_when_not_configured(s3_peer: S3Peer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_peer.new_bucket()
    settings = S3Settings(**{k: v for k, v in s3_peer.settings(bucket).items()
                             if k not in ("access_key_id", "secret_access_key")})
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(StorageStartupError, match="no credentials"):
        S3BlobStore.from_settings(settings, tmp_path / "a")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    store = S3BlobStore.from_settings(settings, tmp_path / "b")
    assert _put(store, b"ok") in set(store.iter_keys())


def test_clean_temp_aborts_abandoned_multipart_uploads_of_its_prefix(store: S3BlobStore) -> None:
    """An upload a crash cut short is aborted at start-up, if it is old (moto dates every upload 2010) and under
    this store's prefix (another node's uploads elsewhere in the bucket are left alone)."""
    ours = store.client.create_multipart_upload(Bucket=store.bucket, Key=f"objects/{store.new_key()}")
    other = store.client.create_multipart_upload(Bucket=store.bucket, Key="elsewhere/x")
    assert store.clean_temp() == 1
    left = {u["UploadId"] for u in store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])}
    assert left == {other["UploadId"]} and ours["UploadId"] not in left


# -- settings ---------------------------------------------------------------------------------------------------


def test_storage_settings_from_toml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "interop.toml"
    config.write_text(
        '[storage]\nbackend = "s3"\n\n[storage.s3]\nendpoint_url = "http://minio:9000"\nbucket = "dicom"\n'
        'prefix = "/site-a"\naddressing_style = "path"\ncache_bytes = 2147483648\n'
    )
    monkeypatch.setenv("INTEROP_CONFIG", str(config))
    monkeypatch.setenv("INTEROP_STORAGE__S3__ACCESS_KEY_ID", "key")
    monkeypatch.setenv("INTEROP_STORAGE__S3__SECRET_ACCESS_KEY", "a-secret")
    s = Settings().storage
    assert s.backend == "s3" and s.s3 is not None
    assert (s.s3.bucket, s.s3.prefix, s.s3.cache_bytes) == ("dicom", "site-a/", 2 << 30)
    assert s.s3.secret_access_key is not None and s.s3.secret_access_key.get_secret_value() == "a-secret"
    assert "a-secret" not in repr(s)


@pytest.mark.parametrize("values, message", [
    ({"INTEROP_STORAGE__BACKEND": "s3"}, "needs a \\[storage.s3\\] section"),
    ({"INTEROP_STORAGE__BACKEND": "s3", "INTEROP_STORAGE__S3__BUCKET": "b-1",
      "INTEROP_STORAGE__S3__ACCESS_KEY_ID": "k"}, "both access_key_id and secret_access_key"),
    ({"INTEROP_STORAGE__BACKEND": "nfs"}, "backend"),
])
def test_bad_storage_settings_are_refused(values: dict[str, str], message: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTEROP_CONFIG", raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        Settings()
