"""Where instance files live: a small interface, the filesystem implementation, and the factory that picks
the configured one (``storage.backend``: ``file`` here, ``s3`` in :mod:`interop.store.s3`).

Callers never assume a local path exists (they use :meth:`BlobStore.open`), except through
:meth:`BlobStore.local_path`, which may return ``None`` (it does for S3).

Durability (DESIGN promise 1): :meth:`FileBlobStore.put_file` returns only after the file's bytes and
its directory entry are fsynced. Files are written under ``tmp/`` and renamed into ``objects/``; a crash
leaves at worst a temporary file (removed at start-up) or an object no index row points at (invisible;
``interop store check`` lists them).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    from interop.config import Settings


@runtime_checkable
class BlobStore(Protocol):
    def __hash__(self) -> int:
        """Stores are hashable (by identity): readers cache per (store, key), e.g. ``pixels.layout_of``."""
        ...

    def new_key(self) -> str: ...

    def put_file(self, src: Path, key: str) -> None:
        """Take ownership of ``src`` (moved, or copied and removed) and store it durably under ``key``."""

    def open(self, key: str) -> BinaryIO: ...

    def local_path(self, key: str) -> Path | None: ...

    def delete(self, key: str) -> None: ...

    def size(self, key: str) -> int: ...

    def iter_keys(self) -> Iterator[str]: ...

    def temp_dir(self) -> Path:
        """A local directory for receiving files before they are stored: on the same volume as the objects (file)
        or as the read cache (S3), so that storing is a rename or an upload, never a local copy."""

    def clean_temp(self) -> int:
        """Remove what a crash left half-done (received files, partial uploads); returns how many. At start-up."""

    def ping(self) -> None:
        """Raise ``OSError`` (with the reason) unless objects can be stored now: the readiness check."""


def check_key(key: str) -> str:
    """``key`` if it is a blob key this node could have made (no path separators, no leading dot)."""
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"bad blob key {key!r}")
    return key


def open_blob_store(settings: Settings) -> BlobStore:
    """The configured store: files under ``<data_dir>/blobs``, or the S3 bucket (checked now: an unusable one
    stops start-up with its reason, :class:`interop.store.s3.StorageStartupError`)."""
    root = settings.data_dir / "blobs"
    if settings.storage.backend == "s3":
        from interop.store.s3 import S3BlobStore

        assert settings.storage.s3 is not None  # StorageSettings refuses s3 without its section
        return S3BlobStore.from_settings(settings.storage.s3, root)
    return FileBlobStore(root)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Objects as files under ``root/objects/<k[:2]>/<key>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def clean_temp(self) -> int:
        """Remove files left in ``tmp/`` by a crash; returns how many. Call only at start-up."""
        n = 0
        for p in self.tmp.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
        return n

    def new_key(self) -> str:
        return uuid.uuid4().hex

    def _path(self, key: str) -> Path:
        return self.objects / check_key(key)[:2] / key

    def temp_dir(self) -> Path:
        return self.tmp

    def ping(self) -> None:
        probe = self.tmp / ".ready-probe"
        probe.write_bytes(b"")
        probe.unlink()

    def put_file(self, src: Path, key: str) -> None:
        dest = self._path(key)
        parent = dest.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.objects)
        with open(src, "rb+") as f:
            os.fsync(f.fileno())
        try:
            os.replace(src, dest)
        except OSError:  # another volume: copy, fsync, remove the source
            tmp = parent / f".{key}.part"
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            os.unlink(src)
        fsync_dir(parent)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def iter_keys(self) -> Iterator[str]:
        for shard in self.objects.iterdir():
            if shard.is_dir():
                for p in shard.iterdir():
                    if not p.name.startswith("."):
                        yield p.name
