"""MLLP framing: ``<VT 0x0B> message <FS 0x1C><CR 0x0D>`` (HL7 v2.5.1 Implementation Guide, Appendix C:
Minimal Lower Layer Protocol, release 2).

:class:`Deframer` is the receive side as a pure state machine (bytes in, complete frames out), so the
listener stays a thin shell and the edge cases (frames split across reads, several frames in one read,
noise between frames, oversized frames, a frame cut off by the peer) are tested without sockets. A frame is
only ever emitted whole: whatever is pending when the connection closes is dropped by the caller.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

#: Bytes of an oversized frame kept so that its MSH can still be read to address the AR.
OVERSIZE_HEAD = 4096


def frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block."""
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True)
class Oversized:
    """A frame longer than the limit: its first bytes (for the MSH) and its total length."""

    head: bytes
    size: int


class Deframer:
    """Splits a byte stream into MLLP frames (MLLP release 2, §C.4.1 block format).

    Bytes outside a block (before a start byte) are skipped, as the guide allows a receiver to do.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self._scanned = 0  # bytes of the current frame already searched for END_BLOCK
        self._oversize: int | None = None  # length so far of an oversized frame being skipped
        self._head = b""
        self.skipped = 0  # bytes seen outside any frame

    @property
    def partial(self) -> bool:
        """True while a frame has started and not ended (what a closing connection leaves cut off)."""
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        """Add received bytes; return the frames (payloads without the framing) they complete, in order."""
        self._buf += data
        out: list[bytes | Oversized] = []
        while self._buf:
            if not self._in_frame:
                start = self._buf.find(START_BLOCK)
                if start < 0:
                    self.skipped += len(self._buf)
                    self._buf.clear()
                    break
                self.skipped += start
                del self._buf[: start + 1]
                self._in_frame, self._scanned = True, 0
                continue
            end = self._buf.find(END_BLOCK, max(self._scanned - 1, 0))
            if end < 0:
                self._scanned = len(self._buf)
                if self._oversize is not None:
                    keep = 1 if self._buf.endswith(END_BLOCK[:1]) else 0  # an end marker split across reads
                    self._oversize += len(self._buf) - keep
                    del self._buf[: len(self._buf) - keep]
                    self._scanned = keep
                elif len(self._buf) > self.max_frame:
                    self._head = bytes(self._buf[:OVERSIZE_HEAD])
                    self._oversize = 0
                    continue
                break
            if self._oversize is not None:
                out.append(Oversized(self._head, self._oversize + end))
                self._oversize, self._head = None, b""
            elif end > self.max_frame:
                out.append(Oversized(bytes(self._buf[:OVERSIZE_HEAD]), end))
            else:
                out.append(bytes(self._buf[:end]))
            del self._buf[: end + len(END_BLOCK)]
            self._in_frame = False
        return out


def send(host: str, port: int, messages: list[bytes], *, timeout: float = 30.0) -> list[bytes]:
    """Send each message over one connection and wait for its acknowledgement (a blocking MLLP client for
    tools and tests). Returns the acknowledgement payloads in order."""
    acks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deframer = Deframer(1 << 24)
        for message in messages:
            sock.sendall(frame(message))
            got: list[bytes | Oversized] = []
            while not got:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed before the acknowledgement")
                got = deframer.feed(data)
            acks.extend(g for g in got if isinstance(g, bytes))
    return acks
