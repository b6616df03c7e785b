"""Acknowledgements (HL7 v2.5.1 Ch. 2 §2.9; ACK message §2.14.1; MSA §2.15.8; ERR §2.15.5).

Original mode (§2.9.2): ``AA`` (application accept) is sent only once the message and what it produced are
committed; ``AE`` (application error) says the content was wrong; ``AR`` (application reject) says the
message was refused for a reason unrelated to its content (unsupported type, event, version or processing
ID; unreadable header). Enhanced mode's accept acknowledgment (§2.9.3.1) says the same of the message
itself: ``CA`` (commit accept) once it is in safe storage, ``CE`` (commit error) when it was not accepted,
``CR`` (commit reject) for the reasons ``AR`` gives. An error ACK carries one ERR segment: ERR-2 the location
(ERL), ERR-3 the HL7 error code (table 0357), ERR-4 the severity (table 0516: ``E`` error), ERR-8 a message
for a person.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
from dataclasses import dataclass, replace

from interop.hl7v2.parse import CHARSETS, Header

#: HL7 table 0357 (message error condition codes), v2.5.1.
ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+)(?:\.(\d+))?)?\Z")
_ids = itertools.count(1)
_PREFIX = f"{os.getpid() % 100000:05d}"


@dataclass(frozen=True)
class Outcome:
    """What the receiver decided about one message: the MSA-1 code and, for AE/AR, the ERR content."""

    code: str  # AA | AE | AR, or enhanced mode's accept codes CA | CE | CR
    error_code: str | None = None  # table 0357
    error_text: str | None = None  # ERR-8
    location: str | None = None  # ``SEG[n]-f.c``, becomes ERR-2

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")

    def as_accept(self) -> Outcome:
        """The same decision as an enhanced-mode accept acknowledgment (§2.9.3.1): AA → CA, AE → CE, AR → CR."""
        return replace(self, code=_ACCEPT_CODES.get(self.code, self.code))


_ACCEPT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}


def _escape(text: str, header: Header) -> str:
    """Escape delimiters in free text (§2.7.1)."""
    fs, enc = header.field_sep, header.encoding_chars
    esc = enc[2] if len(enc) > 2 else "\\"
    out = text.replace(esc, f"{esc}E{esc}").replace(fs, f"{esc}F{esc}")
    names = "SRET"
    for ch, name in zip(enc, names, strict=False):
        if name != "E":
            out = out.replace(ch, f"{esc}{name}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def erl(location: str, comp: str) -> str:
    """ERR-2 (ERL, §2.A.27): segment ID ^ sequence ^ field position [^ repetition ^ component]."""
    m = _LOCATION.match(location)
    if not m:
        return ""
    seg, seq, field, component = m.groups()
    parts = [seg, seq or "1"]
    if field:
        parts.append(field)
        if component:
            parts += ["1", component]
    return comp.join(parts)


def build_ack(header: Header | None, outcome: Outcome, *, application: str = "INTEROP", facility: str = "",
              now: dt.datetime | None = None) -> bytes:
    """The ACK for a message with ``header`` (None when the MSH could not be read), in the message's own
    delimiters, version and character set (§2.9.2: the ACK goes back to MSH-3/MSH-4, MSA-2 echoes MSH-10)."""
    h = header or Header()
    fs = h.field_sep
    comp = h.encoding_chars[0]
    stamp = (now or dt.datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    control_id = f"ACK{_PREFIX}{next(_ids):09d}"
    trigger = h.trigger_event
    msh = [
        "MSH", h.encoding_chars, application, facility, h.sending_application, h.sending_facility, stamp, "",
        comp.join(["ACK", trigger, "ACK"]) if trigger else "ACK", control_id, h.processing_id or "P",
        h.version or "2.5.1",
    ]
    charset = h.charset if h.charset.upper() in CHARSETS else ""
    if charset:
        msh += ["", "", "", "", "", charset]
    segments = [fs.join(msh), fs.join(["MSA", outcome.code, _escape(h.control_id, h)])]
    if not outcome.accepted:
        code = outcome.error_code or "207"
        err_code = comp.join([code, ERROR_CODES.get(code, ""), "HL70357"])
        location = erl(outcome.location, comp) if outcome.location else ""
        text = _escape(outcome.error_text or ERROR_CODES.get(code, ""), h)
        segments.append(fs.join(["ERR", "", location, err_code, "E", "", "", "", text]))
    codec = CHARSETS.get(charset.upper(), "utf-8")
    return ("\r".join(segments) + "\r").encode(codec, errors="replace")
