"""A running ``interop serve`` on the S3 backend, driven by real peers: dcmtk's ``storescu`` (C-STORE),
dicomweb-client (WADO-RS, QIDO-RS), and moto's standalone S3 server as the object store (a real S3 protocol
endpoint over HTTP, not an in-process mock of boto3; tests/store/s3peer.py).

Promise 1 with S3: an acknowledged instance is in the bucket (kill -9 mid-transfer loses nothing acknowledged);
S3 down means C-STORE A700 / STOW-RS FailureReason A700 with nothing stored, and ``/readyz`` says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from interop.config import S3Settings
from interop.store.instances import InstanceStore
from interop.store.models import Instance
from interop.store.s3 import S3BlobStore
from tests.conftest import ServerProc
from tests.dicom.peers import (
    counts,
    database,
    dataset_bytes,
    fresh_instance,
    send,
    store_responses,
    storescu,
    temp_files,
)
from tests.dicom.test_crash import _make_series, _send_and_kill
from tests.dicomweb.conftest import client, failed_reasons, stow, with_public_url
from tests.store.s3peer import S3Peer
from tests.support import require_tool, sample_file

pytestmark = pytest.mark.peer


def _node(server_factory: type, peer: S3Peer, bucket: str, **s3: str) -> ServerProc:
    srv: ServerProc = server_factory(peer.env(bucket, **s3), start=False)  # type: ignore[operator]
    return with_public_url(srv).start()


def _rows(server: ServerProc) -> dict[str, Instance]:
    db = database(server)
    try:
        with db.reading() as s:
            return {i.sop_uid: i for i in s.scalars(select(Instance))}
    finally:
        db.dispose()


def _spooled(server: ServerProc) -> list[Path]:
    """Received files in the spool directory (torch puts its own cache folder there: the node's tempdir)."""
    return [p for p in temp_files(server) if p.is_file()]


def _object(peer: S3Peer, bucket: str, key: str) -> bytes:
    return bytes(peer.client().get_object(Bucket=bucket, Key=f"objects/{key}")["Body"].read())


def test_c_store_then_wado_and_qido_on_s3(s3_peer: S3Peer, server_factory: type,
                                          dicomdir_study: list[Path]) -> None:
    require_tool("storescu")
    bucket = s3_peer.new_bucket()
    srv = _node(server_factory, s3_peer, bucket)
    sent = [*dicomdir_study, sample_file("CT_small.dcm")]
    out = storescu(srv, *sent)
    assert store_responses(out.stdout + out.stderr) == ["Success"] * len(sent), out.stdout[-2000:]

    rows = _rows(srv)
    assert sorted(k.removeprefix("objects/") for k in s3_peer.keys(bucket)) == sorted(r.blob_key for r in rows.values())
    assert not (srv.data_dir / "blobs" / "objects").exists(), "no instance file is kept outside the bucket"
    assert httpx.get(f"{srv.base_url}/readyz").json()["checks"]["storage"] == "ok"

    # With the local cache emptied behind the node's back, everything comes from the bucket.
    cache = srv.data_dir / "blobs" / "cache"
    assert len(list(cache.iterdir())) == len(sent), "what was stored went into the read cache"
    for p in cache.iterdir():
        p.unlink()
    web = client(srv)
    studies = web.search_for_studies(search_filters={"PatientID": "77654033"})
    assert len(studies) == 2
    for path in sent:
        want = dcmread(path)
        got = web.retrieve_instance(want.StudyInstanceUID, want.SeriesInstanceUID, want.SOPInstanceUID)
        assert got.SOPInstanceUID == want.SOPInstanceUID
        assert got.PixelData == want.PixelData
    ct = dcmread(sample_file("CT_small.dcm"))
    (frame,) = web.retrieve_instance_frames(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, [1],
                                            media_types=("application/octet-stream",))
    assert frame == ct.PixelData
    assert len(list(cache.iterdir())) == len(sent), "what was read from the bucket is cached again"


def test_kill_during_c_store_on_s3_loses_nothing_acknowledged(s3_peer: S3Peer, server_factory: type,
                                                             tmp_path: Path) -> None:
    """tests/dicom/test_crash.py's scenario on the S3 backend: SIGKILL after 100 acknowledgements."""
    require_tool("storescu")
    n = 130
    bucket = s3_peer.new_bucket()
    srv = _node(server_factory, s3_peer, bucket)
    study_uid, sent = _make_series(tmp_path / "series", n)
    acked, log = _send_and_kill(srv, tmp_path / "series")
    assert 100 <= len(acked) < n, f"the kill must land mid-transfer:\n{log[-2000:]}"

    srv.start()
    rows = _rows(srv)
    assert acked <= set(rows), f"acknowledged but lost: {sorted(acked - set(rows))[:5]}"
    assert len(set(rows) - acked) <= 1, "only the instance in flight may be stored without its acknowledgement"
    for uid, row in rows.items():
        data = _object(s3_peer, bucket, row.blob_key)
        assert data[row.dataset_offset:] == dataset_bytes(sent[uid]), f"{uid} is not what was sent"
    assert _spooled(srv) == [], "partial receive files must be gone after a restart"

    store = S3BlobStore.from_settings(S3Settings(**s3_peer.settings(bucket)), tmp_path / "check")
    db = database(srv)
    orphans = InstanceStore(db, store).orphan_blobs()
    db.dispose()
    assert len(orphans) <= 1, f"more than the one object in flight has no index row: {orphans}"
    assert not {r.blob_key for r in rows.values()} & set(orphans)

    again = storescu(srv, tmp_path / "series")
    assert store_responses(again.stdout + again.stderr) == ["Success"] * n
    assert counts(srv) == (1, 1, n)
    assert len(s3_peer.keys(bucket)) == n + len(orphans)


@pytest.fixture
def own_peer() -> Iterator[S3Peer]:
    peer = S3Peer().start()
    yield peer
    peer.stop()


def test_s3_down_refuses_with_a700_and_stores_nothing(own_peer: S3Peer, server_factory: type,
                                                      tmp_path: Path) -> None:
    bucket = own_peer.new_bucket()
    srv = _node(server_factory, own_peer, bucket, max_attempts="2")
    ct = sample_file("CT_small.dcm")
    assert send(srv, fresh_instance(ct, tmp_path)) == [0x0000]

    own_peer.stop()
    late = fresh_instance(ct, tmp_path)
    assert send(srv, late) == [0xA700], "PS3.4 B.2.3: Refused: Out of Resources"
    r = stow(srv, [fresh_instance(ct, tmp_path).read_bytes()])
    assert failed_reasons(r.json()) == [0xA700]
    ready = httpx.get(f"{srv.base_url}/readyz")
    assert ready.status_code == 503
    storage = ready.json()["checks"]["storage"]
    assert storage.startswith("error:") and "can't connect" in storage, storage
    assert counts(srv)[2] == 1, "nothing half-stored: no index row without its object"
    assert _spooled(srv) == []

    own_peer.start()
    assert httpx.get(f"{srv.base_url}/readyz").status_code == 200
    assert send(srv, late) == [0x0000]
    assert counts(srv)[2] == 2
    assert len(own_peer.keys(bucket)) == 2


def test_start_up_with_a_missing_bucket_says_so_in_one_line(s3_peer: S3Peer, server_factory: type) -> None:
    srv: ServerProc = server_factory(s3_peer.env("interop-no-such-bucket"), start=False)  # type: ignore[operator]
    with pytest.raises(RuntimeError, match="exited with 1"):
        srv.start(timeout=60)
    log = srv.log()
    assert "interop: storage.s3: s3://interop-no-such-bucket/" in log and "does not exist" in log
    assert "Traceback" not in log
