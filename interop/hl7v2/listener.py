"""The MLLP listener: an asyncio TCP server (HL7 v2.5.1 Implementation Guide Appendix C, MLLP release 2)
around :class:`~interop.hl7v2.messages.MessageLog`.

It runs in its own thread with its own event loop, not in uvicorn's: the node starts it from the (sync)
``Node.start``, it keeps working whatever serves HTTP, and HTTP latency never waits on an MLLP burst nor the
other way round. Each connection is read by a :class:`~interop.hl7v2.mllp.Deframer`; every complete frame is
handed, in the order it arrived, to :class:`~interop.hl7v2.group.GroupCommit`, which reads (and, unless it asks
only for an accept acknowledgment, maps) it on a worker thread and commits it together with whatever else
arrived meanwhile (the database commit blocks; the loop does not). A frame's ACK is written once its group is
committed, in the order the frames came, so a connection's messages are applied in the order sent, whether the
sender waits for each ACK (original mode, §2.9.2) or pipelines several. Connections run side by side.

A frame the peer cuts off (connection closed before ``FS CR``) is dropped: nothing was acknowledged, so
nothing is stored. A frame over ``hl7.max_message_bytes`` is answered ``AR`` (``CR`` to a message asking only
for an accept acknowledgment; addressed from its MSH when that was readable) and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from interop.config import Hl7Settings
from interop.errors import InteropError, MessageTooLarge
from interop.hl7v2.ack import Outcome
from interop.hl7v2.group import GroupCommit
from interop.hl7v2.messages import MessageLog, Received, outcome_of
from interop.hl7v2.mllp import Deframer, Oversized, frame
from interop.hl7v2.parse import Header, read_header
from interop.tls import server_context

log = logging.getLogger(__name__)


class MllpListener:
    """Serves MLLP on ``settings.host:settings.port`` from a background thread."""

    def __init__(self, settings: Hl7Settings, messages: MessageLog, *, workers: int = 1,
                 max_group: int = 16) -> None:
        # One mapping worker: the mapping is pure Python, so more threads only contend for the interpreter
        # lock (measured: with four, a pipelining sender got 250–370 ACKs/s, with one 800), while one still
        # maps the next message while the committing thread waits on its fsync.
        self.settings = settings
        self.messages = messages
        self.workers = workers
        self.max_group = max_group
        self.port: int | None = None  # the bound port (settings.port may be 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.group: GroupCommit | None = None
        self._connections: set[asyncio.Task[None]] = set()
        #: Connections waiting for the first byte of their next message (closed at once by a shutdown).
        self._idle: set[asyncio.Task[None]] = set()
        self._draining = False
        #: Called for each complete frame before it is stored; raising an InteropError answers the message with
        #: that error instead (the free-space watermark, interop.store.space: AE, ERR-3 207).
        self.admit: Callable[[], None] | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def start(self) -> None:
        """Bind and serve; returns once listening (raises if the port cannot be bound)."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mllp-worker")
        self.group = GroupCommit(self.messages, self._pool, max_group=self.max_group)
        self.group.start()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                tls = server_context(self.settings.tls) if self.settings.tls else None
                self._server = loop.run_until_complete(asyncio.start_server(
                    self._serve, self.settings.host, self.settings.port, reuse_address=True, ssl=tls,
                    ssl_handshake_timeout=10 if tls else None))
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="mllp-listener", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self.group.stop()
            self._pool.shutdown(wait=False)
            raise failure[0]
        log.info("MLLP listening on %s:%d%s", self.settings.host, self.port, " (TLS)" if self.settings.tls else "")

    def _drain(self) -> None:
        """(On the loop.) Stop accepting; close the connections waiting for a message; the others close once
        the message they are receiving or storing is acknowledged."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for task in list(self._idle):
            task.cancel()

    def stop_accepting(self) -> None:
        """Close the listening socket and the idle connections at once (from any thread); messages under way
        are still stored and acknowledged."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                loop.call_soon_threadsafe(self._drain)

    def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; a message being received or stored gets up to ``grace`` seconds to be acknowledged;
        then every connection is closed (a frame cut off is not stored, so nothing unacknowledged is kept)."""
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            self._drain()
            if self._connections:
                await asyncio.wait(set(self._connections), timeout=grace)
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(RuntimeError):  # the loop already stopped
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=grace + 10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        if self.group is not None:
            self.group.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._server = None
        self._loop = None
        self._draining = False
        self._thread = None

    # -- one connection --------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        deframer = Deframer(self.settings.max_message_bytes)
        group = self.group
        assert group is not None
        try:
            while True:
                if not deframer.partial:
                    if self._draining:
                        break
                    self._idle.add(task)
                try:
                    data = await asyncio.wait_for(reader.read(1 << 16), self.settings.idle_timeout)
                except TimeoutError:
                    log.info("MLLP %s idle for %.0f s: closing", peer, self.settings.idle_timeout)
                    break
                finally:
                    self._idle.discard(task)
                if not data:
                    break
                # Every frame of this read is queued first (in order), so pipelined frames share a group.
                pending = [self._oversized(item) if isinstance(item, Oversized)
                           else self._refused(item) or asyncio.wrap_future(group.submit(item, peer))
                           for item in deframer.feed(data)]
                for answer in pending:
                    ack = answer if isinstance(answer, bytes) else self.messages.reply(await answer)
                    writer.write(frame(ack))
                if pending:
                    await writer.drain()
            if deframer.partial:
                log.warning("MLLP %s closed the connection inside a frame: the partial message is discarded", peer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("MLLP %s: connection lost (%s)", peer, exc)
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            self._idle.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _refused(self, raw: bytes) -> bytes | None:
        """The ACK refusing ``raw`` unstored when :attr:`admit` says no (e.g. storage nearly full), else None."""
        if self.admit is None:
            return None
        try:
            self.admit()
        except InteropError as err:
            header: Header | None
            try:
                header = read_header(raw)
            except InteropError:
                header = None
            log.warning("MLLP: message %s refused unstored: %s", header.control_id if header else "?", err.message)
            got = Received(header, self._told(header, outcome_of(err)), None)
            return self.messages.reply(got)
        return None

    def _oversized(self, item: Oversized) -> bytes:
        header: Header | None
        try:
            header = read_header(item.head)
        except InteropError:
            header = None
        err = MessageTooLarge(f"message of {item.size} bytes exceeds the {self.settings.max_message_bytes}-byte "
                              "limit (hl7.max_message_bytes); it was not stored")
        log.warning("MLLP: refused a %d-byte message from %s (control ID %s)", item.size,
                    header.sender if header else "?", header.control_id if header else "?")
        return self.messages.ack(header, self._told(header, outcome_of(err)))

    def _told(self, header: Header | None, outcome: Outcome) -> Outcome:
        """A refusal in the codes the sender asked for: CE/CR to a message that wants an accept acknowledgment."""
        if header is not None and self.messages.accept_only(header):
            return outcome.as_accept()
        return outcome

