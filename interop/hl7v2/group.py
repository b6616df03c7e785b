"""Group commit of received HL7 v2 messages: one database transaction, and so one fsync, for every message
that arrived while the previous group was being committed (DESIGN promise 1; HL7 v2.5.1 Ch. 2 §2.9.2).

Group commit keeps an original-mode ``AA`` meaning "the message and its FHIR resources are committed", and takes
off each message what can be shared: the commit and its fsync, the transaction's begin, the session. A message
in enhanced mode that asks only for an accept acknowledgment (MSH-15 given, MSH-16 empty or ``NE``) goes through
the same queue, but its group commits only the raw message (``CA``: kept durably); its resources are written
after the ACK by the applier (:meth:`MessageLog.apply_pending`). That is what the standard's accept
acknowledgment says (§2.9.3.1: the message is in safe storage), and it is what makes a burst fast: the receive
path is then a read, a parse and one small insert, while the mapping and the FHIR store's validation and index
writes (the bulk of a message's CPU) run behind it. In original mode they stay in front of the ACK, because
``AA`` says they are done.

How: :meth:`GroupCommit.submit` is called by a connection for each frame in the order it arrived. The message is
read (and mapped, unless accept-only) at once on the worker thread (pure work, :meth:`MessageLog.prepare`),
while one committing thread takes the queue in order: everything waiting when it comes round goes into one
:meth:`MessageLog.record` (up to ``max_group`` messages), which commits it and resolves each message's future;
only then does the connection write that message's ACK. A connection's messages therefore reach the store in the
order sent, also when it pipelines them; connections run side by side; a sender that waits for each ACK
(original mode) simply finds its next message in the next group. With one connection sending and waiting, a
group is one message and nothing is saved; with several, the commit is shared. ``max_group`` bounds how long one
group holds the database's write lock (on SQLite every other writer, a C-STORE or a FHIR create, waits for it):
16 messages of ~5–10 ms each in original mode, far less for accept-only ones.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Executor, Future

from interop.hl7v2.ack import Outcome
from interop.hl7v2.messages import MessageLog, Prepared, Received

log = logging.getLogger(__name__)

#: One queued message: its bytes, its peer, its preparation on the pool and the future its sender waits on.
_Ticket = tuple[bytes, "str | None", "Future[Prepared]", "Future[Received]"]


class GroupCommit:
    """One committing thread in front of a :class:`MessageLog`."""

    def __init__(self, messages: MessageLog, pool: Executor, *, max_group: int = 16) -> None:
        self.messages = messages
        self.pool = pool
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Ticket | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: How many groups of each size were committed so far (what the tests look at; a metric could too).
        self.groups: dict[int, int] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mllp-commit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit what is queued, then stop the committing thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._thread = None

    def submit(self, raw: bytes, peer: str | None) -> Future[Received]:
        """Queue one message (call in arrival order); the future resolves once it is committed (or refused)."""
        done: Future[Received] = Future()
        self._queue.put((raw, peer, self.pool.submit(self.messages.prepare, raw, peer), done))
        return done

    # -- the committing thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < self.max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
            self._commit(group)

    def _commit(self, group: list[_Ticket]) -> None:
        prepared = [self._prepared(t) for t in group]  # in order of arrival
        try:
            results = self.messages.record(prepared)
        except Exception:  # record() does not raise; a bug must still answer every waiting sender
            log.exception("HL7: a group of %d messages could not be stored", len(group))
            results = [Received(p.header, _FAILED, None) for p in prepared]
        self.groups[len(group)] = self.groups.get(len(group), 0) + 1
        for (_, _, _, done), got in zip(group, results, strict=True):
            if done.set_running_or_notify_cancel():  # False: its connection closed meanwhile (no ACK to send)
                done.set_result(got)

    @staticmethod
    def _prepared(ticket: _Ticket) -> Prepared:
        raw, peer, prep, _ = ticket
        try:
            return prep.result()
        except Exception:  # prepare() does not raise; if it did, the message is still kept, with AE
            log.exception("HL7: a message from %s could not be prepared", peer)
            return Prepared(raw, peer, None, _FAILED)


_FAILED = Outcome("AE", "207", "application internal error: the message could not be stored; send it again")
