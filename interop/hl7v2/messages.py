"""The receive path of an HL7 v2 message, from its bytes to its acknowledgement, and the durable message log.

HL7 v2.5.1 Ch. 2 §2.9.2 (original-mode acknowledgement), DESIGN promises 1 and 2:

* the raw message and the FHIR resources it maps to are committed in the same database transaction, and
  only then is ``AA`` returned (a crash before the commit leaves nothing, and the sender, having no ACK,
  sends again). Messages that arrive together share that transaction (:meth:`MessageLog.record`, driven by
  :mod:`interop.hl7v2.group`): one commit and one fsync for the group, each message under its own savepoint;
* a message whose content is wrong (``AE``) or that we do not take (``AR``) is kept too, with the error; its
  outcome is decided before anything is written, so a group never holds a message it could not answer;
* the same MSH-10 from the same sender (MSH-3, MSH-4) is answered with the stored outcome, nothing applied
  twice (the unique key of :class:`Hl7Message` settles races between writers; within a group, the first
  copy's outcome answers the later ones);
* :meth:`MessageLog.replay` re-processes stored messages (``interop hl7 replay``) through the same code;
* enhanced mode (§2.9.3), when the sender asks only for an accept acknowledgment (MSH-15 given, MSH-16 empty
  or ``NE``, as lab systems commonly send): the accept acknowledgment answers for what §2.9.3.1 puts on it,
  the message and its safe keeping. The header is checked (type, event, version, processing ID: ``CR``) and
  the message decoded and split into well-formed segments (``CE`` with the ERR segment otherwise), then the
  raw message is committed, ``pending``, and answered ``CA`` ("in safe storage, do not send it again"). The
  sender asked for no application acknowledgment, so the mapping is left to the applier
  (:meth:`MessageLog.apply_pending`, a background loop), which writes the resources right after, in arrival
  order, each message's resources and the end of its ``pending`` in one transaction: exactly once, also across
  a crash (pending rows are picked up at start). What it finds wrong with the content (a value that is not a
  number, a missing PID-3) or what the store refuses is kept on the message row with the same error code and
  location an ``AE`` would carry, logged, counted (``interop_hl7_messages{ack="apply-error"}``) and can be
  re-applied with ``interop hl7 replay``. The applier gives way to a burst of incoming messages for at most
  ``hl7.apply_max_lag`` seconds, and above ``hl7.max_pending`` waiting messages receiving waits for it, so a
  burst is taken at the speed of a durable insert and the backlog stays bounded. Mapping in front of the ACK
  cost a burst half its rate (measured: 1 connection 600 → 1,200 ACKs/s without it).

The work before the commit (header, decode, parse, map: :meth:`MessageLog.prepare`) is pure and runs outside
the write transaction.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from interop import logs, metrics
from interop.config import Hl7Settings
from interop.errors import InteropError
from interop.hl7v2.ack import Outcome, build_ack
from interop.hl7v2.mapping import Mapped, MappingOptions, check_header, to_bundle
from interop.hl7v2.models import Hl7Message
from interop.hl7v2.parse import Header, parse, read_header
from interop.store.db import Database
from interop.store.models import utcnow

log = logging.getLogger(__name__)

#: ``FhirStore.transaction``: applies a transaction Bundle inside the given session (the caller commits).
Transaction = Callable[..., dict[str, Any]]

_MAX_ERROR_TEXT = 2000


def mapping_options(settings: Hl7Settings) -> MappingOptions:
    """Mapping options from the ``[hl7]`` settings; offset-less HL7 times are read in ``hl7.timezone``, else
    in this machine's zone (``/etc/localtime``, DST-aware), else UTC."""
    tz: dt.tzinfo = dt.UTC
    if settings.timezone:
        tz = ZoneInfo(settings.timezone)
    else:
        try:
            with open("/etc/localtime", "rb") as f:
                tz = ZoneInfo.from_file(f, key="localtime")
        except (OSError, ValueError):
            pass
    return MappingOptions(tz=tz, identifier_systems=dict(settings.identifier_systems))


def outcome_of(exc: InteropError) -> Outcome:
    """The ACK an error is told with: its ACK code, table 0357 code, text and location."""
    return Outcome(exc.hl7_ack, exc.hl7_error_code, exc.message[:_MAX_ERROR_TEXT], exc.expression)


@dataclass(frozen=True)
class Received:
    """What happened to one message: its header (None if unreadable), the outcome, the log row and whether
    it was a duplicate answered from the log."""

    header: Header | None
    outcome: Outcome
    message_id: int | None
    duplicate: bool = False
    resources: tuple[str, ...] = ()
    #: Accepted (CA) with its resources still to be written by the applier.
    pending: bool = False


@dataclass(frozen=True)
class Prepared:
    """A message read and mapped, nothing stored yet (:meth:`MessageLog.prepare`): the outcome it will be
    acknowledged with unless storing it fails, and the Bundle to apply when that outcome is ``AA``."""

    raw: bytes
    peer: str | None
    header: Header | None
    outcome: Outcome
    mapped: Mapped | None = None
    #: Answered with an accept acknowledgment (CA/CE/CR); when accepted, mapped and written later.
    deferred: bool = False

    @property
    def key(self) -> tuple[str, str, str] | None:
        """The message's identity for duplicates (MSH-3, MSH-4, MSH-10), as the log's unique key stores it."""
        h = self.header
        if h is None or not h.control_id:
            return None
        return h.sending_application[:227], h.sending_facility[:227], h.control_id[:199]


_TABLE = cast(Table, Hl7Message.__table__)
_INSERT = insert(_TABLE).returning(_TABLE.c.id)
_PRIOR = select(_TABLE.c.id, _TABLE.c.raw, _TABLE.c.control_id, _TABLE.c.ack_code, _TABLE.c.error_code,
                _TABLE.c.error_text, _TABLE.c.error_location, _TABLE.c.resources).where(
    _TABLE.c.sending_application == bindparam("app"), _TABLE.c.sending_facility == bindparam("fac"),
    _TABLE.c.control_id == bindparam("cid"))


#: Seconds after the last accepted message during which the applier counts the receiver as busy.
_BUSY_WINDOW = 0.05
#: Messages the applier writes per transaction; fewer while messages arrived in the last second, so that a
#: batch holds the write lock (and the interpreter) only briefly while senders wait for their ACKs.
APPLY_BATCH = 16
_APPLY_BATCH_BUSY = 4


class MessageLog:
    """Processes received messages into the store and keeps each one with its outcome."""

    def __init__(self, db: Database, transaction: Transaction | None, options: MappingOptions, *,
                 application: str = "INTEROP", facility: str = "", notify_interval: float = 0.25,
                 commit_acks: bool = False, apply_max_lag: float = 2.0, max_pending: int = 10_000) -> None:
        self.db = db
        self.transaction = transaction
        self.options = options
        self.application = application
        self.facility = facility
        #: Answer enhanced-mode accept-only messages with CA after a durable insert (``hl7.accept_acknowledgments``).
        self.commit_acks = commit_acks
        self.apply_max_lag = apply_max_lag
        self.max_pending = max_pending
        #: Called when a message was accepted pending (the applier's wake-up).
        self.on_accepted: Callable[[], None] | None = None
        #: Monotonic time each pending message was accepted, oldest first (-inf: found pending at start).
        self._pending: collections.deque[float] = collections.deque()
        self._pending_lock = threading.Lock()
        self._last_accept = -math.inf
        self._room = threading.Condition(self._pending_lock)
        #: Set at shutdown: the applier stops after its current batch (what it had not applied stays pending).
        self.stopping = threading.Event()
        #: Called after messages' resources are committed, e.g. to wake routing: at once after a quiet spell,
        #: and during a burst at most once per ``notify_interval`` seconds, always once after the last commit
        #: (:class:`Coalesced`). A wake per commit would have routing re-read its window hundreds of times a
        #: second, on the same CPU the receive path needs.
        self.on_stored: Callable[[], None] | None = None
        self._notify = Coalesced(notify_interval)

    # -- receive ---------------------------------------------------------------------------------------------

    def handle(self, raw: bytes, peer: str | None = None) -> bytes:
        """Process one message (the payload of an MLLP frame) and return its ACK; never raises."""
        return self.reply(self.receive(raw, peer))

    def reply(self, got: Received) -> bytes:
        """The ACK for a message's outcome (counted in the metrics, and logged under the message's correlation
        id: its type, sender, ACK code and error code and location, never the error text, which may quote the
        message's content)."""
        h = got.header
        metrics.HL7_MESSAGES.labels(h.message_type if h else "unreadable", got.outcome.code).inc()
        with logs.correlated(correlation_id(h)):
            log.info("HL7 %s from %s answered %s%s%s", h.message_type if h else "message", h.sender if h else "?",
                     got.outcome.code, f" ({got.outcome.error_code} at {got.outcome.location or '-'})"
                     if got.outcome.error_code else "", " (duplicate)" if got.duplicate else "",
                     extra={"hl7_message": got.message_id})
        return self.ack(h, got.outcome)

    def ack(self, header: Header | None, outcome: Outcome) -> bytes:
        return build_ack(header, outcome, application=self.application, facility=self.facility)

    def receive(self, raw: bytes, peer: str | None = None) -> Received:
        """Map and commit ``raw``, or find it in the log; the outcome to acknowledge with."""
        return self.record([self.prepare(raw, peer)])[0]

    def prepare(self, raw: bytes, peer: str | None = None, *, to_apply: bool = False) -> Prepared:
        """Read, parse and map ``raw`` (no I/O; never raises): everything decided before the database. A
        message that asks only for an accept acknowledgment is read and parsed, not mapped (unless
        ``to_apply``: the applier's and the replay's call)."""
        try:
            header = read_header(raw)
        except InteropError as exc:  # no usable MSH: nothing can be routed, so it is refused (AR)
            return Prepared(raw, peer, None, replace(outcome_of(exc), code="AR"))
        if self.accept_only(header) and not to_apply:
            try:
                check_header(header)  # CR: a type, event, version or processing ID we do not take
                parse(raw, header)  # CE: undecodable bytes, a broken segment
                outcome = Outcome("CA")
            except InteropError as exc:
                outcome = outcome_of(exc).as_accept()
            except Exception:
                log.exception("HL7 message %s from %s could not be read", header.control_id, header.sender)
                outcome = Outcome("CE", "207", "application internal error: the message could not be read")
            return Prepared(raw, peer, header, outcome, None, deferred=True)
        try:
            mapped = self.map(raw, header)
            outcome = Outcome("AA")
        except InteropError as exc:
            mapped, outcome = None, outcome_of(exc)
        except Exception:  # a bug in the mapping: kept with AE, so that a replay can apply it once fixed
            log.exception("HL7 message %s from %s could not be mapped", header.control_id, header.sender)
            mapped, outcome = None, Outcome("AE", "207", "application internal error: the message could not be "
                                                         "mapped")
        return Prepared(raw, peer, header, outcome, mapped)

    def accept_only(self, header: Header) -> bool:
        """Whether ``header``'s message is answered with an accept acknowledgment (CA/CE/CR) and applied after."""
        return self.commit_acks and header.commit_ack

    def map(self, raw: bytes, header: Header) -> Mapped:
        """Decode, parse and map (pure: raises :class:`InteropError` for anything wrong with the message)."""
        check_header(header)  # AR before any content is read
        return to_bundle(parse(raw, header), self.options)

    def record(self, group: Sequence[Prepared]) -> list[Received]:
        """Store a group of prepared messages, in order, in *one* database transaction (one commit, one
        fsync), and return each one's outcome; only then may any of them be acknowledged.

        A message whose resources the store refuses is kept with its error (AE) and the rest of the group is
        unaffected: the group is first written without savepoints (each costs statements and bookkeeping), and
        if anything in it fails, undone and written again with each message under its own savepoint. The same sender
        and control ID twice (in the log already, or earlier in this group) is answered as the first was.
        Messages later in the group see what earlier ones wrote, so a correction (OBX-11 ``C``) finds the
        Observation its original created in the same group. If the group cannot be committed at all, each
        message is tried again on its own, so one message's failure never costs the others their ``AA``.

        An accepted deferred message (enhanced mode, accept acknowledgment only) is inserted ``pending``, its
        resources left to :meth:`apply_pending`; with ``hl7.max_pending`` messages already waiting, this
        waits for the applier first."""
        self._wait_for_room(sum(1 for p in group if p.deferred and p.outcome.accepted))
        try:
            try:
                with self.db.writing() as s:
                    got = self._record_group(s, group, isolated=False)
            except Exception:  # e.g. one message refused by the store: again, each under its savepoint
                with self.db.writing() as s:
                    got = self._record_group(s, group, isolated=True)
        except Exception as exc:
            if len(group) > 1:
                log.warning("HL7: a group of %d messages could not be committed (%s); storing them one by one",
                            len(group), exc)
                return [r for item in group for r in self.record([item])]
            return [self._not_stored(group[0], exc)]
        accepted = sum(1 for r in got if r.pending and not r.duplicate)
        if accepted:
            now = time.monotonic()
            with self._pending_lock:
                first = not self._pending
                self._pending.extend([now] * accepted)
                self._last_accept = now
            # The applier looks again every few tens of milliseconds anyway: woken only at a burst's start, so a
            # burst does not pay a thread switch per message.
            if first and self.on_accepted is not None:
                self.on_accepted()
        if self.on_stored is not None and any(r.resources and not r.duplicate for r in got):
            self._notify(self.on_stored)
        return got

    def _record_group(self, s: Session, group: Sequence[Prepared], *, isolated: bool) -> list[Received]:
        first: dict[tuple[str, str, str], tuple[Prepared, Received]] = {}
        out: list[Received] = []
        for item in group:
            key = item.key
            earlier = first.get(key) if key is not None else None
            if earlier is not None:  # sent again before the first copy's ACK: answered as the first copy
                _warn_reused(earlier[0].raw, item, earlier[1].message_id)
                out.append(replace(earlier[1], header=item.header, duplicate=True))
                continue
            got = self._record_one(s, item, isolated=isolated)
            if key is not None:
                first[key] = (item, got)
            out.append(got)
        return out

    def _record_one(self, s: Session, item: Prepared, *, isolated: bool) -> Received:
        """Store one message; ``isolated``: under a savepoint, a refusal kept as its outcome (otherwise raised)."""
        prior = self._find(s, item.key)
        if prior is not None:
            return self._duplicate(prior, item)
        outcome = item.outcome
        if item.deferred and item.outcome.accepted:  # CA: kept now, mapped and written by apply_pending
            return Received(item.header, outcome, self._insert(s, item, outcome, [], pending=True), pending=True)
        if item.mapped is not None and not isolated:
            resources = self._apply(s, item.mapped)
            message_id = self._insert(s, item, outcome, resources)
            return Received(item.header, outcome, message_id, resources=tuple(resources))
        if item.mapped is not None:
            try:
                with s.begin_nested():
                    resources = self._apply(s, item.mapped)
                    message_id = self._insert(s, item, outcome, resources)
                return Received(item.header, outcome, message_id, resources=tuple(resources))
            except InteropError as exc:  # refused by the store: its writes were undone; kept with the error
                outcome = outcome_of(exc)
            except IntegrityError:  # the same sender and control ID committed by another writer meanwhile
                prior = self._find(s, item.key)
                if prior is None:
                    raise
                return self._duplicate(prior, item)
        return Received(item.header, outcome, self._insert(s, item, outcome, []))

    def _insert(self, s: Session, item: Prepared, outcome: Outcome, resources: list[str], *,
                pending: bool = False) -> int:
        h = item.header
        now = utcnow()
        return int(s.connection().execute(_INSERT, {
            "received_at": now,
            "peer": (item.peer or "")[:64] or None,
            "sending_application": h.sending_application[:227] if h else "",
            "sending_facility": h.sending_facility[:227] if h else "",
            "control_id": (h.control_id[:199] or None) if h else None,
            "message_type": h.message_type[:32] if h else "",
            "version": h.version[:16] if h else "",
            "raw": item.raw,
            "ack_code": outcome.code,
            "error_code": outcome.error_code,
            "error_text": outcome.error_text,
            "error_location": (outcome.location or "")[:64] or None,
            "resources": json.dumps(resources) if resources else None,
            "processed_at": now,
            "replays": 0,
            "pending": pending,
        }).scalar_one())

    def _not_stored(self, item: Prepared, exc: Exception) -> Received:
        """A message whose transaction failed: another writer stored the same control ID first (answered as
        that one was), or the database failed (AE, nothing stored: the sender is to send it again)."""
        if isinstance(exc, IntegrityError):
            with self.db.reading() as s:
                prior = self._find(s, item.key)
            if prior is not None:
                return self._duplicate(prior, item)
        log.error("HL7 message from %s could not be stored", item.peer, exc_info=exc)
        return Received(item.header, Outcome("AE", "207", "application internal error: the message could not be "
                                                           "stored; send it again"), None)

    def _apply(self, s: Session, mapped: Mapped) -> list[str]:
        """Write the mapped Bundle in the message's transaction; the ``Type/id`` of what it wrote."""
        if self.transaction is None:
            return list(mapped.keys)
        response = self.transaction(mapped.bundle, session=s)
        out: list[str] = []
        for entry in response.get("entry", []):
            location = str((entry.get("response") or {}).get("location", ""))
            if location:
                out.append(location.split("/_history/", 1)[0])
        return out

    @staticmethod
    def _find(s: Session, key: tuple[str, str, str] | None) -> Any:
        if key is None:
            return None
        return s.connection().execute(_PRIOR, {"app": key[0], "fac": key[1], "cid": key[2]}).first()

    @staticmethod
    def _duplicate(prior: Any, item: Prepared) -> Received:
        _warn_reused(prior.raw, item, prior.id)
        outcome = Outcome(prior.ack_code, prior.error_code, prior.error_text, prior.error_location)
        resources = tuple(json.loads(prior.resources)) if prior.resources else ()
        return Received(item.header, outcome, prior.id, duplicate=True, resources=resources)

    # -- the applier: resources of accepted (CA) messages -------------------------------------------------

    def load_pending(self) -> int:
        """Count the messages left pending by an earlier run (call at start, before receiving): they are due
        at once. Returns how many there are."""
        with self.db.reading() as s:
            n = int(s.scalar(select(func.count()).select_from(_TABLE).where(_TABLE.c.pending)) or 0)
        with self._pending_lock:
            self._pending = collections.deque([-math.inf] * n)
        return n

    @property
    def pending(self) -> int:
        """Accepted messages whose resources are not written yet (as this process counts them)."""
        return len(self._pending)

    def apply_due(self) -> int:
        """Write pending messages' resources, batch after batch, until none is left or the receiver should
        have the machine: while messages keep arriving (one accepted in the last 50 ms) the applier gives way,
        unless the oldest waiting message was accepted ``apply_max_lag`` seconds ago or ``max_pending`` are
        waiting. Overdue while messages keep arriving, it takes at most half the time: after each batch it
        pauses as long as the batch took, so a long burst is still acknowledged at a good rate until
        ``max_pending`` are waiting (then the receiver waits for it). Returns how many messages it applied (the
        background loop calls it again when woken)."""
        done = 0
        while self._pending and not self.stopping.is_set():
            with self._pending_lock:
                now = time.monotonic()
                oldest = self._pending[0] if self._pending else now
                busy = now - self._last_accept < _BUSY_WINDOW
                full = len(self._pending) >= self.max_pending
                if busy and now - oldest < self.apply_max_lag and not full:
                    break
                recent = now - self._last_accept < 1.0
            n = self.apply_pending(_APPLY_BATCH_BUSY if recent else APPLY_BATCH)
            if busy and not full:
                time.sleep(min(time.monotonic() - now, 0.2))
            if n == 0:
                with self._pending_lock:  # nothing pending in the database: this process's count is stale
                    self._pending.clear()
                    self._room.notify_all()
                break
            done += n
        return done

    def apply_pending(self, limit: int = APPLY_BATCH) -> int:
        """Write the resources of up to ``limit`` pending messages, oldest first, in one transaction, each row
        taken out of ``pending`` in the same transaction (claimed with ``UPDATE … WHERE pending``, so another
        applier that got there first is skipped). Should one of them fail (the store refuses its Bundle, or a
        bug), the batch is undone and each message applied in its own transaction: a refusal then stays on
        its row, the others commit. Returns how many rows it took."""
        with self.db.reading() as s:
            rows = s.connection().execute(select(_TABLE.c.id, _TABLE.c.raw, _TABLE.c.peer)
                                          .where(_TABLE.c.pending).order_by(_TABLE.c.id).limit(limit)).all()
        if not rows:
            return 0
        items = [(int(r.id), self.prepare(r.raw, r.peer, to_apply=True)) for r in rows]
        try:
            with self.db.writing() as s:  # no savepoint per message: the batch is redone one by one if need be
                results = [self._apply_row(s, message_id, item, alone=False) for message_id, item in items]
        except Exception as exc:
            if not isinstance(exc, InteropError):
                log.warning("HL7: applying %d accepted messages together failed (%s); one by one", len(items), exc)
            results = [self._apply_alone(message_id, item) for message_id, item in items]
        self._applied(len(items))
        if self.on_stored is not None and any(results):
            self._notify(self.on_stored)
        return len(items)

    def _apply_alone(self, message_id: int, item: Prepared) -> list[str] | None:
        try:
            with self.db.writing() as s:
                return self._apply_row(s, message_id, item, alone=True)
        except Exception as exc:
            log.error("HL7: accepted message %s could not be applied", message_id, exc_info=exc)
            self._give_up(message_id)
            return None

    def _apply_row(self, s: Session, message_id: int, item: Prepared, *, alone: bool) -> list[str] | None:
        """Claim one pending row and write its resources (None: another applier took it, or it failed). In a
        batch (not ``alone``) a refusal by the store is raised, to undo the batch; alone, it is kept on the row."""
        conn = s.connection()
        claimed = conn.execute(update(_TABLE).where(_TABLE.c.id == message_id, _TABLE.c.pending)
                               .values(pending=False, processed_at=utcnow())).rowcount
        if not claimed:
            return None
        outcome = item.outcome
        if item.mapped is not None:
            try:
                if alone:
                    with s.begin_nested():
                        resources = self._apply(s, item.mapped)
                else:
                    resources = self._apply(s, item.mapped)
                conn.execute(update(_TABLE).where(_TABLE.c.id == message_id)
                             .values(resources=json.dumps(resources) if resources else None))
                return resources
            except InteropError as exc:  # refused by the store: its writes were undone; kept with the error
                if not alone:
                    raise
                outcome = outcome_of(exc)
        with logs.correlated(correlation_id(item.header)):
            log.warning("HL7 message %s was accepted (CA) but could not be applied: error %s at %s",
                        message_id, outcome.error_code, outcome.location or "-")
        metrics.HL7_MESSAGES.labels(item.header.message_type if item.header else "unreadable", "apply-error").inc()
        conn.execute(update(_TABLE).where(_TABLE.c.id == message_id).values(
            error_code=outcome.error_code, error_text=outcome.error_text,
            error_location=(outcome.location or "")[:64] or None))
        return None

    def _give_up(self, message_id: int) -> None:
        """A pending message whose transaction cannot commit at all: out of ``pending`` with error 207, so the
        applier does not retry it forever (``interop hl7 replay`` can, once the cause is fixed)."""
        try:
            with self.db.writing() as s:
                s.connection().execute(update(_TABLE).where(_TABLE.c.id == message_id, _TABLE.c.pending).values(
                    pending=False, processed_at=utcnow(), error_code="207",
                    error_text="application internal error: the accepted message could not be applied"))
        except Exception:
            log.exception("HL7: accepted message %s could not be marked as failed", message_id)

    def _applied(self, n: int) -> None:
        with self._pending_lock:
            for _ in range(min(n, len(self._pending))):
                self._pending.popleft()
            self._room.notify_all()

    def _wait_for_room(self, incoming: int, timeout: float = 60.0) -> None:
        """Wait (the committing thread: so every sender waits for its ACK) while ``max_pending`` accepted
        messages wait for the applier; after ``timeout`` seconds the messages are taken anyway."""
        if not incoming:
            return
        deadline = time.monotonic() + timeout
        with self._room:
            while len(self._pending) >= self.max_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("HL7: %d accepted messages still wait for the applier after %.0f s; taking more",
                                len(self._pending), timeout)
                    return
                if self.on_accepted is not None:
                    self.on_accepted()
                self._room.wait(min(left, 0.5))

    # -- replay ----------------------------------------------------------------------------------------------

    def replay(self, *, ids: list[int] | None = None, since: dt.datetime | None = None,
               codes: list[str] | None = None, errors: bool = False) -> Iterator[tuple[Hl7Message, Outcome]]:
        """Re-process stored messages in the order they were received, updating each one's outcome and
        resources; yields each row with its new outcome. Conditional writes make a replay of an applied
        message change nothing but versions; replaying an *older* message alone re-applies its content over
        later ones, so replay ranges, not single old messages, where results were corrected since. ``errors``:
        only messages with an error recorded (an AE/AR, or a CA message the applier could not apply)."""
        with self.db.reading() as s:
            q = select(Hl7Message.id).order_by(Hl7Message.id)
            if errors:
                q = q.where(Hl7Message.error_code.is_not(None))
            if ids:
                q = q.where(Hl7Message.id.in_(ids))
            if since is not None:
                q = q.where(Hl7Message.received_at >= since)
            if codes:
                q = q.where(Hl7Message.ack_code.in_(codes))
            todo = list(s.scalars(q))
        for message_id in todo:
            yield self._replay_one(message_id)

    def _replay_one(self, message_id: int) -> tuple[Hl7Message, Outcome]:
        with self.db.reading() as s:
            raw = s.get_one(Hl7Message, message_id).raw
        item = self.prepare(raw, "replay", to_apply=True)
        mapped, outcome = item.mapped, item.outcome
        resources: list[str] = []
        try:
            with self.db.writing() as s:
                if mapped is not None:
                    resources = self._apply(s, mapped)
                row = self._update(s, message_id, outcome, resources)
        except InteropError as exc:
            outcome = outcome_of(exc)
            with self.db.writing() as s:
                row = self._update(s, message_id, outcome, [])
        # as recorded: a message accepted with CA keeps that code, what applying it found in the error columns
        return row, Outcome(row.ack_code, row.error_code, row.error_text, row.error_location)

    @staticmethod
    def _update(s: Session, message_id: int, outcome: Outcome, resources: list[str]) -> Hl7Message:
        row = s.get_one(Hl7Message, message_id)
        if row.ack_code == "CA":  # the sender was told CA; what applying it found goes in the error columns
            outcome = replace(outcome, code="CA")
        row.pending = False
        row.ack_code, row.error_code, row.error_text = outcome.code, outcome.error_code, outcome.error_text
        row.error_location = (outcome.location or "")[:64] or None
        row.resources = json.dumps(resources) if resources else None
        row.processed_at = utcnow()
        row.replays = (row.replays or 0) + 1
        return row


class Coalesced:
    """Calls a hook at most once per ``interval`` seconds: at once when it last ran longer ago than that,
    otherwise once when the interval is up (a timer), which covers every call made meanwhile. So the hook
    always runs after the last call of a burst, never more than ``interval`` later."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last = -math.inf
        self._timer: threading.Timer | None = None

    def __call__(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if self._timer is not None:  # a call is already due, after this one's commit
                return
            now = time.monotonic()
            wait = self._last + self.interval - now
            if wait > 0:
                self._timer = threading.Timer(wait, self._due, (hook,))
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = now
        hook()

    def _due(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        try:
            hook()
        except Exception:
            log.exception("HL7: the hook after a commit failed")


def correlation_id(header: Header | None) -> str | None:
    """A message's correlation id (interop.logs.hl7_id) from its identity in the log (MSH-3, MSH-4, MSH-10, as
    stored); None without a control ID."""
    if header is None or not header.control_id:
        return None
    return logs.hl7_id(header.sending_application[:227], header.sending_facility[:227], header.control_id[:199])


def _warn_reused(first_raw: bytes, item: Prepared, first_id: int | None) -> None:
    if first_raw != item.raw:
        log.warning("HL7 control ID %s from %s was used again for a different message; answered with the stored "
                    "outcome of message %s", item.header.control_id if item.header else "?",
                    item.header.sender if item.header else "?", first_id)
