"""``multipart/related`` bodies (RFC 2387) as DICOMweb uses them (PS3.18 §8.6.1.2).

* :class:`MultipartReceiver` parses a request body incrementally and writes each part to its own file,
  so a STOW-RS upload of any size costs a bounded amount of memory.
* :func:`multipart_body` yields a response body part by part from chunk iterators (WADO-RS), never
  holding more than one chunk.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from interop.errors import InvalidInput

CHUNK = 1 << 20
#: How much of a body may precede the first boundary (an RFC 2046 preamble) before we call it not multipart.
MAX_PREAMBLE = 64 * 1024


@dataclass
class ReceivedPart:
    """One body part, written to ``path``; ``headers`` has lower-cased names."""

    path: Path
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


class MultipartReceiver:
    """Feed it body chunks with :meth:`feed`, then :meth:`close`; parts land as files in ``directory``.

    On any error (:class:`InvalidInput` for a body that isn't well-formed multipart) call :meth:`discard`
    to remove the files written so far.
    """

    def __init__(self, boundary: bytes, directory: Path) -> None:
        self.boundary = boundary
        self.directory = directory
        self.parts: list[ReceivedPart] = []
        self._file: BinaryIO | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self._ended = False
        self._preamble = bytearray()
        self._started = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=32,
        )

    # -- parser callbacks -----------------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._field.clear()
        self._value.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=self.directory)
        self._file = os.fdopen(fd, "wb")
        self.parts.append(ReceivedPart(Path(name), dict(self._headers)))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None
        self._file.write(data[start:end])
        self.parts[-1].size += end - start

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _end(self) -> None:
        self._ended = True

    # -- feeding --------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse the next piece of the body."""
        if self._ended:
            return  # an epilogue after the close delimiter is ignored (RFC 2046 §5.1.1)
        if not self._started:
            self._preamble += data
            at = self._find_first_boundary()
            if at < 0:
                if len(self._preamble) > MAX_PREAMBLE:
                    raise InvalidInput("request body is not multipart: no boundary delimiter found")
                return
            self._started = True
            data = bytes(self._preamble[at:])
            self._preamble.clear()
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise InvalidInput(f"malformed multipart body: {exc}") from exc

    def _find_first_boundary(self) -> int:
        delimiter = b"--" + self.boundary
        if self._preamble.startswith(delimiter):
            return 0
        at = self._preamble.find(b"\r\n" + delimiter)
        return at + 2 if at >= 0 else -1

    def close(self) -> list[ReceivedPart]:
        """Finish the body; :class:`InvalidInput` unless it ended with the close delimiter."""
        if not self._started:
            raise InvalidInput("request body is not multipart: no boundary delimiter found")
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise InvalidInput(f"malformed multipart body: {exc}") from exc
        if not self._ended:
            raise InvalidInput("multipart body ended before its close delimiter (truncated upload?)")
        return self.parts

    def discard(self) -> None:
        """Close and remove every part file written so far."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for part in self.parts:
            part.path.unlink(missing_ok=True)


# -- responses -------------------------------------------------------------------------------------------


@dataclass
class Part:
    """A response part: its Content-Type, optional Content-Location, and its bytes as chunks."""

    content_type: str
    chunks: Iterable[bytes]
    location: str | None = None


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_content_type(part_type: str, boundary: str) -> str:
    """``multipart/related; type="…"; boundary=…`` (PS3.18 §8.6.1.2; RFC 2387 ``type`` is required)."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def multipart_body(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart response, one part after another."""
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        if part.location:
            head += f"Content-Location: {part.location}\r\n"
        yield (head + "\r\n").encode("latin-1")
        yield from part.chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")


def file_chunks(fp: BinaryIO, start: int = 0, length: int | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
    """``length`` bytes of ``fp`` from ``start`` (to the end when ``None``), in chunks; closes ``fp``."""
    with fp:
        fp.seek(start)
        left = length
        while left is None or left > 0:
            data = fp.read(chunk if left is None else min(chunk, left))
            if not data:
                if left:
                    raise OSError(f"stored file ended {left} bytes early")
                return
            if left is not None:
                left -= len(data)
            yield data


def primed(parts: Iterator[Part]) -> Iterator[Part]:
    """Produce the first part now, so that an error in it becomes the HTTP status rather than a cut-off body."""
    first = next(parts, None)
    if first is None:
        return iter(())

    def chained() -> Iterator[Part]:
        yield first
        yield from parts

    return chained()
