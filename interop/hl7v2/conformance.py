"""The full structure check of a message against the HL7 v2.5.1 abstract message definitions, with hl7apy.

hl7apy validates every segment group, cardinality and data type, at ~50 ms a message (DESIGN.md): twenty
messages a second per core, so it is *not* on the receive path (see :mod:`interop.hl7v2.parse`). It runs off
that path: in the tests (our sample messages and every kind of ACK we send must conform) and for an
operator diagnosing a refused or odd message from the log (``interop hl7 check``).
"""

from __future__ import annotations

from interop.hl7v2.parse import CHARSETS, read_header


def check(raw: bytes) -> list[str]:
    """Problems hl7apy finds in ``raw`` under strict validation (empty: the message conforms)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    try:
        header = read_header(raw)
        text = raw.decode(CHARSETS.get(header.charset.upper(), "utf-8"))
    except Exception as exc:
        return [str(exc)]
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        message.validate()
    except HL7apyException as exc:
        return [str(exc)]
    except Exception as exc:  # hl7apy raises plain errors for some malformed input
        return [f"{type(exc).__name__}: {exc}"]
    return []
