"""Instance files and result arrays in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, …): the
:class:`~interop.store.blobs.BlobStore` of ``storage.backend = "s3"``, through boto3.

Durability (DESIGN promise 1). A received file is spooled to a local directory (:meth:`S3BlobStore.temp_dir`)
and checked there; :meth:`S3BlobStore.put_file` then uploads it and returns only after S3 answered PutObject
(or CompleteMultipartUpload) with success, which S3 sends once the object is stored durably. The caller commits
the index row after that and only then acknowledges (C-STORE success, STOW-RS 200). A crash before the upload
returns leaves a spool file (removed at start-up) and at worst an incomplete multipart upload (aborted at
start-up once a day old; a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` does the same); a crash
between upload and commit leaves an object no row points at (``interop store check`` lists it). When S3 can't
be reached (after botocore's standard retries) nothing is stored and :class:`StorageUnavailable` says so: a
C-STORE answers A700 *Refused: Out of Resources* (PS3.4 B.2.3), STOW-RS 503, both of which invite a retry.

Keys. The same random keys as the filesystem store, as ``<prefix>objects/<key>``. Storing one key twice leaves
one object (PutObject replaces), so a retried upload can't duplicate anything.

Integrity. Every upload carries its SHA-256 (``x-amz-checksum-sha256``; for multipart uploads one per part), which
S3 checks before it answers; the whole object's SHA-256 also goes into its metadata (``x-amz-meta-sha256``) and
every whole-object download is checked against it before it is used or cached.

Reads go through a bounded local cache of whole objects (``cache_dir``, ``cache_bytes``; least recently used out
first). A stored file moves into it by rename after its upload, so what was just received is read locally (the
duplicate check, the header cache, a job's inputs). A miss fetches the first MiB with one ranged GET (RFC 9110
§14); an object no larger is complete, a larger one that fits the cache is fetched whole, and one too large for
it is read through :class:`RangeReader`, which fetches only the ranges read: the header of a 100 MB multi-frame
instance costs one GET of a MiB, one frame one GET of about its size.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from interop.errors import OutOfResources
from interop.store.blobs import check_key

if TYPE_CHECKING:
    from interop.config import S3Settings

log = logging.getLogger(__name__)

_MiB = 1 << 20
#: The first GET of an uncached object asks for this much: a whole CT/MR slice, or a large object's header.
PROBE_BYTES = _MiB
#: Read-ahead of :class:`RangeReader`: starts here after a seek, doubles while reads are sequential.
_MIN_WINDOW = 256 << 10
_MAX_WINDOW = 16 * _MiB
#: Multipart uploads abandoned by a crash are aborted at start-up once this old (another node may own a younger one).
_STALE_UPLOAD = dt.timedelta(days=1)


class StorageUnavailable(OutOfResources, OSError):
    """The object store can't be reached or refused the request: nothing was stored; the sender may try again
    (C-STORE A700 *Refused: Out of Resources*, PS3.4 B.2.3; HTTP 503). An ``OSError`` too, as a full disk is."""


class StorageStartupError(SystemExit):
    """The configured bucket can't be used: start-up stops with this one line and no traceback, as an invalid
    configuration does."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_MiB):
            h.update(chunk)
    return h.hexdigest()


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or str(
            response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return ""


def describe(exc: BaseException) -> str:
    """What went wrong talking to S3, in one line an operator can act on."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return ("no credentials: set storage.s3.access_key_id and secret_access_key, or provide them the AWS way "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role)")
    if isinstance(exc, EndpointConnectionError):
        return f"can't connect: {exc}"
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        if code in ("404", "NoSuchBucket"):
            return "the bucket does not exist (create it, or name another in storage.s3.bucket)"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"access denied ({code}): check the credentials and the bucket policy"
        return f"{code}: {exc}"
    return f"{type(exc).__name__}: {exc}"


# -- the local cache ------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    sha256: str
    size: int
    #: Checked against its name since this process started (files found at start-up are checked on first use).
    verified: bool


class ObjectCache:
    """Whole objects on local disk, at most ``max_bytes`` of them, least recently used out first.

    A file is named ``<key>.<sha256>`` and never changes once there; files found at start-up (a power loss may
    have left any of them short) are checked against their name the first time they are opened. Partial
    downloads are ``.part-*`` files, renamed in only when complete and checked."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        #: Objects larger than this are never cached whole (one object must not empty the cache).
        self.object_max = min(max_bytes // 4, 256 * _MiB)
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._load()

    def _load(self) -> None:
        found: list[tuple[float, str, str, int]] = []
        for p in self.root.iterdir():
            key, _, sha = p.name.partition(".")
            if p.name.startswith(".") or len(sha) != 64 or not p.is_file():
                p.unlink(missing_ok=True)  # a download a crash cut short
                continue
            st = p.stat()
            found.append((st.st_mtime, key, sha, st.st_size))
        for _, key, sha, size in sorted(found):
            self._add(key, sha, size, verified=False)

    def path(self, key: str, sha256: str) -> Path:
        return self.root / f"{key}.{sha256}"

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def fits(self, size: int) -> bool:
        return size <= self.object_max

    def get(self, key: str) -> tuple[Path, int] | None:
        """(path, size) of the cached object, or ``None``; a use makes it the most recently used."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        path = self.path(key, entry.sha256)
        if not entry.verified:
            try:
                ok = _sha256_file(path) == entry.sha256
            except OSError:
                ok = False
            if not ok:
                log.warning("cached copy of %s does not match its SHA-256; fetching it again", key)
                self.discard(key)
                return None
            entry.verified = True
        return path, entry.size

    def adopt(self, src: Path, key: str, sha256: str, size: int) -> bool:
        """Move ``src`` in by rename (it must be on the cache's volume and fit); ``False`` leaves it where it is."""
        if not self.fits(size):
            return False
        try:
            os.replace(src, self.path(key, sha256))
        except OSError:
            return False
        self._add(key, sha256, size, verified=True)
        return True

    def new_part(self) -> Path:
        return self.root / f".part-{uuid.uuid4().hex}"

    def _add(self, key: str, sha256: str, size: int, *, verified: bool) -> None:
        victims: list[Path] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
                if old.sha256 != sha256:
                    victims.append(self.path(key, old.sha256))
            self._entries[key] = _Entry(sha256, size, verified)
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                k, e = self._entries.popitem(last=False)
                self._bytes -= e.size
                victims.append(self.path(k, e.sha256))
        for p in victims:  # a reader that has it open keeps reading it (POSIX)
            p.unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.size
        if entry is not None:
            self.path(key, entry.sha256).unlink(missing_ok=True)

    def clean(self) -> int:
        n = 0
        for p in self.root.glob(".part-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n


# -- ranged reads ---------------------------------------------------------------------------------------------


class RangeReader(io.RawIOBase):
    """A seekable read-only file over one object that fetches only what is read, by ranged GETs, with a
    read-ahead window that doubles while reads are sequential (so a whole read costs a dozen GETs, not one
    per chunk) and starts small again after a seek. ``head`` is the object's first bytes, already fetched."""

    def __init__(self, get_range: Callable[[int, int], bytes], size: int, head: bytes = b"") -> None:
        super().__init__()
        self._get_range = get_range
        self._size = size
        self._pos = 0
        self._buf = head
        self._buf_start = 0
        self._window = _MIN_WINDOW

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = 0
        while n < len(view) and self._pos < self._size:
            off = self._pos - self._buf_start
            if 0 <= off < len(self._buf):
                k = min(len(view) - n, len(self._buf) - off)
                view[n:n + k] = self._buf[off:off + k]
                n += k
                self._pos += k
            else:
                self._fill(len(view) - n)
        return n

    def readall(self) -> bytes:
        return self.read(max(0, self._size - self._pos)) or b""

    def _fill(self, want: int) -> None:
        sequential = self._pos == self._buf_start + len(self._buf)
        self._window = min(self._window * 2, _MAX_WINDOW) if sequential else _MIN_WINDOW
        length = min(max(want, self._window), self._size - self._pos)
        data = self._get_range(self._pos, self._pos + length - 1)
        if len(data) != length:
            raise OSError(f"ranged GET returned {len(data)} of {length} bytes")
        self._buf, self._buf_start = data, self._pos


# -- the store ------------------------------------------------------------------------------------------------


def make_client(s: S3Settings, *, session: Any = None, max_attempts: int | None = None,
                connect_timeout: float | None = None, read_timeout: float | None = None) -> Any:
    """A boto3 S3 client for ``s``: botocore's standard retry mode, a connection pool as wide as the DIMSE
    listener's associations, checksums only where asked for (explicitly, on every upload: older S3-compatible
    stores refuse the CRC trailers newer botocore adds to every request by default). A second client from the
    same ``session`` costs a few milliseconds, a new session a few hundred (it loads the service model)."""
    import boto3
    from botocore.config import Config

    session = session or boto3.session.Session()
    config = Config(
        region_name=s.region or session.region_name or "us-east-1",
        retries={"mode": "standard", "total_max_attempts": max_attempts or s.max_attempts},
        connect_timeout=connect_timeout or s.connect_timeout_seconds,
        read_timeout=read_timeout or s.read_timeout_seconds,
        max_pool_connections=32,
        s3={"addressing_style": s.addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    secret = s.secret_access_key.get_secret_value() if s.secret_access_key is not None else None
    return session.client("s3", endpoint_url=s.endpoint_url, aws_access_key_id=s.access_key_id,
                          aws_secret_access_key=secret, config=config)


class S3BlobStore:
    """Objects as ``<prefix>objects/<key>`` in ``bucket``; a spool directory and a read cache on local disk."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        root: Path,
        *,
        prefix: str = "",
        cache_dir: Path | None = None,
        cache_bytes: int = 1 << 30,
        multipart_threshold: int = 16 * _MiB,
        ping_client: Any = None,
        where: str = "",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cache = ObjectCache(cache_dir or root / "cache", cache_bytes)
        self.multipart_threshold = multipart_threshold
        self._ping_client = ping_client or client
        self._where = where or f"s3://{bucket}/{prefix}"
        self._transfers: Any = None
        self._transfers_lock = threading.Lock()
        # Concurrent first reads of one object (a viewer fetching frames in parallel) download it once.
        self._fetch_locks = [threading.Lock() for _ in range(64)]

    @classmethod
    def from_settings(cls, s: S3Settings, root: Path, *, check: bool = True) -> S3BlobStore:
        """The store ``s`` describes; with ``check``, the bucket must answer now (:class:`StorageStartupError`)."""
        import boto3

        where = f"s3://{s.bucket}/{s.prefix}" + (f" at {s.endpoint_url}" if s.endpoint_url else "")
        session = boto3.session.Session()
        store = cls(
            make_client(s, session=session), s.bucket, root, prefix=s.prefix, cache_dir=s.cache_dir,
            cache_bytes=s.cache_bytes, multipart_threshold=s.multipart_threshold_bytes,
            ping_client=make_client(s, session=session, max_attempts=1, connect_timeout=2.0, read_timeout=5.0),
            where=where,
        )
        if check:
            try:
                store.ping()
            except OSError as exc:
                raise StorageStartupError(f"interop: storage.s3: {exc}") from None
        return store

    # -- keys ----------------------------------------------------------------------------------------------

    def new_key(self) -> str:
        return uuid.uuid4().hex

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}objects/{check_key(key)}"

    def _unavailable(self, what: str, exc: BaseException) -> StorageUnavailable:
        return StorageUnavailable(f"object store {self._where}: {what}: {describe(exc)}")

    # -- writing -------------------------------------------------------------------------------------------

    def temp_dir(self) -> Path:
        return self.tmp

    def put_file(self, src: Path, key: str) -> None:
        """Upload ``src`` as ``key``; returns once S3 has it (PutObject / CompleteMultipartUpload succeeded).
        Then ``src`` moves into the read cache (or is removed). On failure ``src`` stays for the caller."""
        from botocore.exceptions import BotoCoreError, ClientError
        from s3transfer.exceptions import CancelledError, RetriesExceededError, S3UploadFailedError

        s3_key = self._s3_key(key)
        size = src.stat().st_size
        digest = hashlib.sha256()
        with open(src, "rb") as f:
            while chunk := f.read(_MiB):
                digest.update(chunk)
        sha = digest.hexdigest()
        metadata = {"sha256": sha}
        try:
            if size < self.multipart_threshold:
                with open(src, "rb") as f:
                    self.client.put_object(Bucket=self.bucket, Key=s3_key, Body=f, ContentLength=size,
                                           ChecksumAlgorithm="SHA256",
                                           ChecksumSHA256=base64.b64encode(digest.digest()).decode("ascii"),
                                           Metadata=metadata)
            else:
                # Parts in parallel, each with its SHA-256; a failed upload is aborted (s3transfer).
                self._transfer_manager().upload(
                    str(src), self.bucket, s3_key,
                    extra_args={"ChecksumAlgorithm": "SHA256", "Metadata": metadata},
                ).result()
        except (BotoCoreError, ClientError, RetriesExceededError, S3UploadFailedError, CancelledError) as exc:
            raise self._unavailable(f"storing {key} failed", exc) from exc
        if not self.cache.adopt(src, key, sha, size):
            src.unlink(missing_ok=True)

    def _transfer_manager(self) -> Any:
        with self._transfers_lock:
            if self._transfers is None:
                from s3transfer.manager import TransferConfig, TransferManager

                self._transfers = TransferManager(self.client, TransferConfig(
                    multipart_threshold=self.multipart_threshold, multipart_chunksize=8 * _MiB,
                    max_request_concurrency=4))
            return self._transfers

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self.cache.discard(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._s3_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"deleting {key} failed", exc) from exc

    # -- reading -------------------------------------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        """``None``: a cached copy may leave the cache at any moment, so no caller may hold on to its path."""
        return None

    def open(self, key: str) -> BinaryIO:
        """The object as a seekable binary file: the cached copy, or fetched (see the module's docstring).
        A missing object raises ``FileNotFoundError``, as a missing file does."""
        s3_key = self._s3_key(key)
        with self._fetch_locks[hash(key) % len(self._fetch_locks)]:
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    return open(hit[0], "rb")
                except FileNotFoundError:  # evicted between the look-up and the open
                    self.cache.discard(key)
            return self._fetch(key, s3_key)

    def _get(self, key: str, s3_key: str, first: int | None = None, last: int | None = None) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": s3_key}
        if first is not None:
            kwargs["Range"] = f"bytes={first}-{'' if last is None else last}"
        try:
            return cast(dict[str, Any], self.client.get_object(**kwargs))
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object {key} in {self._where}") from None
            if code == "InvalidRange" and first == 0:  # an empty object has no byte 0
                return self._get(key, s3_key)
            raise self._unavailable(f"reading {key} failed", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(f"reading {key} failed", exc) from exc

    def _read_body(self, key: str, response: dict[str, Any]) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return cast(bytes, response["Body"].read())
        except (BotoCoreError, OSError) as exc:
            raise self._unavailable(f"reading {key} failed", exc) from exc
        finally:
            response["Body"].close()

    def _fetch(self, key: str, s3_key: str) -> BinaryIO:
        response = self._get(key, s3_key, 0, PROBE_BYTES - 1)
        head = self._read_body(key, response)
        size = _object_size(response, len(head))
        expected = (response.get("Metadata") or {}).get("sha256")
        if size <= len(head):
            sha = self._check(key, hashlib.sha256(head), expected)
            if self.cache.fits(size):
                part = self.cache.new_part()
                part.write_bytes(head)
                if self.cache.adopt(part, key, sha, size):
                    return open(self.cache.path(key, sha), "rb")
                part.unlink(missing_ok=True)
            return io.BytesIO(head)
        if self.cache.fits(size):
            return self._download(key, s3_key, head, size, expected)

        def get_range(first: int, last: int) -> bytes:
            return self._read_body(key, self._get(key, s3_key, first, last))

        return cast(BinaryIO, RangeReader(get_range, size, head))

    def _download(self, key: str, s3_key: str, head: bytes, size: int, expected: str | None) -> BinaryIO:
        """The rest of the object after ``head`` into the cache, checked; the cached copy opened."""
        from botocore.exceptions import BotoCoreError

        part = self.cache.new_part()
        digest = hashlib.sha256(head)
        try:
            response = self._get(key, s3_key, len(head))
            with open(part, "wb") as out:
                out.write(head)
                try:
                    for chunk in response["Body"].iter_chunks(_MiB):
                        digest.update(chunk)
                        out.write(chunk)
                except BotoCoreError as exc:
                    raise self._unavailable(f"reading {key} failed", exc) from exc
                finally:
                    response["Body"].close()
            if part.stat().st_size != size:
                raise self._unavailable(f"reading {key} failed", OSError(
                    f"got {part.stat().st_size} of {size} bytes"))
            sha = self._check(key, digest, expected)
            if self.cache.adopt(part, key, sha, size):
                return open(self.cache.path(key, sha), "rb")
            with open(part, "rb") as f:
                return io.BytesIO(f.read())
        finally:
            part.unlink(missing_ok=True)

    def _check(self, key: str, digest: Any, expected: str | None) -> str:
        sha = cast(str, digest.hexdigest())
        if expected is not None and sha != expected:
            raise self._unavailable(f"reading {key} failed", OSError(
                f"content SHA-256 {sha} differs from the stored object's {expected}"))
        return sha

    def size(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        hit = self.cache.get(key)
        if hit is not None:
            return hit[1]
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._s3_key(key))["ContentLength"])
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object {key} in {self._where}") from None
            raise self._unavailable(f"reading {key} failed", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(f"reading {key} failed", exc) from exc

    def iter_keys(self) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        start = f"{self.prefix}objects/"
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", []):
                    name = str(obj["Key"])[len(start):]
                    if name and "/" not in name and not name.startswith("."):
                        yield name
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("listing objects failed", exc) from exc

    # -- health --------------------------------------------------------------------------------------------

    def ping(self) -> None:
        """HeadBucket (one attempt, short timeouts) and a write to the spool directory."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._ping_client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"{self._where}: {describe(exc)}") from exc
        probe = self.tmp / ".ready-probe"
        probe.write_bytes(b"")
        probe.unlink()

    def clean_temp(self) -> int:
        """Remove spool files and partial downloads a crash left; abort this prefix's multipart uploads that
        are over a day old (younger ones may belong to another node sharing the prefix)."""
        n = 0
        for p in self.tmp.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
        n += self.cache.clean()
        return n + self._abort_stale_uploads()

    def _abort_stale_uploads(self) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        cutoff = dt.datetime.now(dt.UTC) - _STALE_UPLOAD
        n = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}objects/")
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        n += 1
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not list or abort abandoned multipart uploads in %s: %s", self._where, describe(exc))
        return n


def _object_size(response: dict[str, Any], got: int) -> int:
    """The whole object's size from a (ranged) GET: ``Content-Range: bytes 0-1048575/123456789``."""
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return int(response.get("ContentLength", got))


__all__ = ["ObjectCache", "RangeReader", "S3BlobStore", "StorageStartupError", "StorageUnavailable", "make_client"]
