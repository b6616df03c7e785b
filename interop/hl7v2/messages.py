"""The receive path of an HL7 v2 message, from its bytes to its acknowledgement, and the durable message log.

HL7 v2.5.1 Ch. 2 §2.9.2 (original-mode acknowledgement), DESIGN promises 1 and 2:

* the raw message and the FHIR resources it maps to are committed in *one* database transaction, and only
  then is ``AA`` returned (a crash before the commit leaves nothing, and the sender, having no ACK, sends
  again);
* a message whose content is wrong (``AE``) or that we do not take (``AR``) is kept too, with the error;
* the same MSH-10 from the same sender (MSH-3, MSH-4) is answered with the stored outcome, nothing applied
  twice (the unique key of :class:`Hl7Message` settles races between connections);
* :meth:`MessageLog.replay` re-processes stored messages (``interop hl7 replay``) through the same code.

The work before the commit (header, decode, parse, map) is pure and runs outside the write transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from interop import metrics
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


class MessageLog:
    """Processes received messages into the store and keeps each one with its outcome."""

    def __init__(self, db: Database, transaction: Transaction | None, options: MappingOptions, *,
                 application: str = "INTEROP", facility: str = "") -> None:
        self.db = db
        self.transaction = transaction
        self.options = options
        self.application = application
        self.facility = facility
        #: Called (in the receiving thread) after a message's resources are committed, e.g. to wake routing.
        self.on_stored: Callable[[], None] | None = None

    # -- receive ---------------------------------------------------------------------------------------------

    def handle(self, raw: bytes, peer: str | None = None) -> bytes:
        """Process one message (the payload of an MLLP frame) and return its ACK; never raises."""
        got = self.receive(raw, peer)
        metrics.HL7_MESSAGES.labels(got.header.message_type if got.header else "unreadable", got.outcome.code).inc()
        return self.ack(got.header, got.outcome)

    def ack(self, header: Header | None, outcome: Outcome) -> bytes:
        return build_ack(header, outcome, application=self.application, facility=self.facility)

    def receive(self, raw: bytes, peer: str | None = None) -> Received:
        """Map and commit ``raw``, or find it in the log; the outcome to acknowledge with."""
        try:
            header = read_header(raw)
        except InteropError as exc:  # no usable MSH: nothing can be routed, so it is refused (AR)
            return self._record(raw, None, peer, replace(outcome_of(exc), code="AR"), None)
        try:
            mapped: Mapped | None = self.map(raw, header)
        except InteropError as exc:
            return self._record(raw, header, peer, outcome_of(exc), None)
        return self._record(raw, header, peer, Outcome("AA"), mapped)

    def map(self, raw: bytes, header: Header) -> Mapped:
        """Decode, parse and map (pure: raises :class:`InteropError` for anything wrong with the message)."""
        check_header(header)  # AR before any content is read
        return to_bundle(parse(raw, header), self.options)

    def _record(self, raw: bytes, header: Header | None, peer: str | None, outcome: Outcome,
                mapped: Mapped | None) -> Received:
        try:
            with self.db.writing() as s:
                prior = self._find(s, header)
                if prior is not None:
                    return self._duplicate(prior, raw, header)
                row = Hl7Message(
                    peer=(peer or "")[:64] or None,
                    sending_application=header.sending_application[:227] if header else "",
                    sending_facility=header.sending_facility[:227] if header else "",
                    control_id=(header.control_id[:199] or None) if header else None,
                    message_type=header.message_type[:32] if header else "",
                    version=header.version[:16] if header else "",
                    raw=raw,
                    ack_code=outcome.code,
                    error_code=outcome.error_code,
                    error_text=outcome.error_text,
                    error_location=(outcome.location or "")[:64] or None,
                    replays=0,
                )
                s.add(row)
                s.flush()
                resources = self._apply(s, mapped) if mapped is not None else []
                row.resources = json.dumps(resources) if resources else None
            if resources and self.on_stored is not None:
                self.on_stored()
            return Received(header, outcome, row.id, resources=tuple(resources))
        except IntegrityError:
            # The same sender and control ID committed by another connection meanwhile: answer as it was.
            with self.db.reading() as s:
                prior = self._find(s, header)
            if prior is None:
                log.exception("HL7 message from %s could not be stored", peer)
                return Received(header, Outcome("AE", "207", "the message could not be stored"), None)
            return self._duplicate(prior, raw, header)
        except InteropError as exc:
            # The resources were refused (the store's validation): the whole transaction rolled back; keep
            # the message with the error instead.
            if mapped is None:
                raise
            return self._record(raw, header, peer, outcome_of(exc), None)
        except Exception:
            log.exception("HL7 message from %s could not be stored", peer)
            return Received(header, Outcome("AE", "207", "application internal error: the message could not be "
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
    def _find(s: Session, header: Header | None) -> Hl7Message | None:
        if header is None or not header.control_id:
            return None
        return s.scalars(select(Hl7Message).where(
            Hl7Message.sending_application == header.sending_application[:227],
            Hl7Message.sending_facility == header.sending_facility[:227],
            Hl7Message.control_id == header.control_id[:199],
        )).first()

    @staticmethod
    def _duplicate(prior: Hl7Message, raw: bytes, header: Header | None) -> Received:
        if prior.raw != raw:
            log.warning("HL7 control ID %s from %s was used again for a different message; answered with the "
                        "stored outcome of message %d", prior.control_id, header.sender if header else "?",
                        prior.id)
        outcome = Outcome(prior.ack_code, prior.error_code, prior.error_text, prior.error_location)
        resources = tuple(json.loads(prior.resources)) if prior.resources else ()
        return Received(header, outcome, prior.id, duplicate=True, resources=resources)

    # -- replay ----------------------------------------------------------------------------------------------

    def replay(self, *, ids: list[int] | None = None, since: dt.datetime | None = None,
               codes: list[str] | None = None) -> Iterator[tuple[Hl7Message, Outcome]]:
        """Re-process stored messages in the order they were received, updating each one's outcome and
        resources; yields each row with its new outcome. Conditional writes make a replay of an applied
        message change nothing but versions; replaying an *older* message alone re-applies its content over
        later ones, so replay ranges, not single old messages, where results were corrected since."""
        with self.db.reading() as s:
            q = select(Hl7Message.id).order_by(Hl7Message.id)
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
        mapped: Mapped | None = None
        try:
            header = read_header(raw)
            mapped = self.map(raw, header)
            outcome = Outcome("AA")
        except InteropError as exc:
            outcome = outcome_of(exc)
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
        return row, outcome

    @staticmethod
    def _update(s: Session, message_id: int, outcome: Outcome, resources: list[str]) -> Hl7Message:
        row = s.get_one(Hl7Message, message_id)
        row.ack_code, row.error_code, row.error_text = outcome.code, outcome.error_code, outcome.error_text
        row.error_location = (outcome.location or "")[:64] or None
        row.resources = json.dumps(resources) if resources else None
        row.processed_at = utcnow()
        row.replays = (row.replays or 0) + 1
        return row
