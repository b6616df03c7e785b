"""The HL7 v2 message log: every message received, raw, with the outcome it was acknowledged with."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Index, Integer, LargeBinary, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from interop.store.models import Base, utcnow


class Hl7Message(Base):
    """One received message (HL7 v2.5.1 Ch. 2) and the acknowledgement it got (§2.9).

    ``(sending_application, sending_facility, control_id)`` is unique: MSH-10 identifies a message for its
    sender (§2.14.9.10), so a message sent again is found here and acknowledged with the stored outcome
    instead of being applied twice. Messages whose MSH could not be read have no control ID.

    A message answered with an enhanced-mode accept acknowledgment (``CA``, §2.9.3) is ``pending`` until
    its resources are committed (:meth:`interop.hl7v2.messages.MessageLog.apply_pending`); the ``error_*``
    columns of such a row then hold what applying it found, if anything (its ``ack_code`` stays ``CA``)."""

    __tablename__ = "hl7_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: ``host:port`` of the sender's connection (or ``replay``).
    peer: Mapped[str | None] = mapped_column(String(64))
    sending_application: Mapped[str] = mapped_column(String(227), default="")  # MSH-3
    sending_facility: Mapped[str] = mapped_column(String(227), default="")  # MSH-4
    control_id: Mapped[str | None] = mapped_column(String(199))  # MSH-10
    message_type: Mapped[str] = mapped_column(String(32), default="")  # MSH-9.1^MSH-9.2
    version: Mapped[str] = mapped_column(String(16), default="")  # MSH-12
    #: The message exactly as received (inside the MLLP frame), in its own character set (MSH-18).
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    ack_code: Mapped[str] = mapped_column(String(2))  # MSA-1: AA | AE | AR, or CA | CE | CR
    error_code: Mapped[str | None] = mapped_column(String(8))  # ERR-3 (table 0357)
    error_text: Mapped[str | None] = mapped_column(Text)  # ERR-8
    error_location: Mapped[str | None] = mapped_column(String(64))  # ERR-2 as SEG[n]-f.c
    #: JSON list of what the message wrote: ``Type/id`` of each FHIR resource.
    resources: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Times ``interop hl7 replay`` re-processed it.
    replays: Mapped[int] = mapped_column(Integer, default=0)
    #: Accepted (``CA``) and kept, its resources not yet written.
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        UniqueConstraint("sending_application", "sending_facility", "control_id", name="uq_hl7_messages_sender_id"),
        Index("ix_hl7_messages_received_at", "received_at"),
        # Only the few pending rows are in it: the applier's queue, in arrival order.
        Index("ix_hl7_messages_pending", "id", sqlite_where=text("pending"), postgresql_where=text("pending")),
    )
