"""Fixtures of the store tests: the S3 peer and each blob store backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from interop.config import S3Settings
from interop.store.blobs import BlobStore, FileBlobStore
from tests.store.s3peer import S3Peer

if TYPE_CHECKING:
    from interop.store.s3 import S3BlobStore


@pytest.fixture(scope="session")
def s3_peer() -> Iterator[S3Peer]:
    """One moto S3 server for the session (tests that stop it start their own)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    peer = S3Peer().start()
    yield peer
    peer.stop()


_session: Any = None


def s3_store(peer: S3Peer, root: Path, **settings: Any) -> S3BlobStore:
    """A store on a new bucket of ``peer``, built as ``from_settings`` builds it, on one boto3 session for the
    whole test run (a new session costs a few hundred ms: it loads the S3 service model)."""
    global _session
    import boto3

    from interop.store.s3 import S3BlobStore, make_client

    _session = _session or boto3.session.Session()
    s = S3Settings(**peer.settings(peer.new_bucket(), **settings))
    store = S3BlobStore(make_client(s, session=_session), s.bucket, root, prefix=s.prefix, cache_dir=s.cache_dir,
                        cache_bytes=s.cache_bytes, multipart_threshold=s.multipart_threshold_bytes)
    store.ping()
    return store


@pytest.fixture(params=["file", "s3", "s3-uncached"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each backend: files; S3 with its read cache; S3 without one (every read a ranged GET)."""
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    peer: S3Peer = request.getfixturevalue("s3_peer")
    cache = {"cache_bytes": 0} if request.param == "s3-uncached" else {}
    return s3_store(peer, tmp_path / "blobs", multipart_threshold_bytes=5 << 20, **cache)
