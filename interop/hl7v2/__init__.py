"""HL7 v2 over MLLP (HL7 v2.5.1): framing, parsing, mapping to FHIR R4, acknowledgements, the message log.

Data flow: :mod:`.listener` (asyncio MLLP server) → :mod:`.mllp` (framing) → :mod:`.group` (group commit)
→ :mod:`.messages` (the receive path and durable log) → :mod:`.parse` (MSH, character set, segments) →
:mod:`.mapping` (pure HL7 → FHIR transaction Bundle) → ``FhirStore.transaction`` in the DB transaction that
also stores the raw message (one per group of messages that arrived together) → :mod:`.ack` (AA/AE/AR).
"""

from __future__ import annotations

from interop.hl7v2.ack import Outcome, build_ack
from interop.hl7v2.group import GroupCommit
from interop.hl7v2.listener import MllpListener
from interop.hl7v2.mapping import Mapped, MappingOptions, to_bundle
from interop.hl7v2.messages import MessageLog, Prepared, Received
from interop.hl7v2.parse import Header, Message, parse, read_header

__all__ = [
    "GroupCommit",
    "Header",
    "Mapped",
    "MappingOptions",
    "Message",
    "MessageLog",
    "MllpListener",
    "Outcome",
    "Prepared",
    "Received",
    "build_ack",
    "parse",
    "read_header",
    "to_bundle",
]
