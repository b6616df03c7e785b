"""Reading an HL7 v2 message: the MSH header, the character set, the segments (HL7 v2.5.1 Ch. 2).

The receive path splits a message into segments itself, and a field into repetitions, components and
subcomponents only when the mapping reads it (:class:`Segment`): ~0.05 ms for the 12-segment lab panel,
where python-hl7's ``hl7.parse``, which builds an object for every field of every segment, took ~0.7 ms
(escape sequences are still resolved by python-hl7's ``unescape``). Neither checks a message against the
abstract message definitions (segment groups, cardinalities, data types): that is what hl7apy does, at
~50 ms a message (DESIGN.md). So the structure check here is deliberately narrow and fast: the MSH fields
routing and the acknowledgement need (§2.14.9), every segment well formed (a three-character segment ID,
§2.5), the text decodable in the MSH-18 character set (§2.14.9.18), and then, in
:mod:`interop.hl7v2.mapping`, every field the mapping reads checked where it reads it (required, data type,
table value). :mod:`interop.hl7v2.conformance` runs hl7apy's full check off the hot path, to explain a
refused message in more depth.

:func:`read_header` works on the raw bytes and never needs the body to decode, so that even a message whose
body is undecodable gets an acknowledgement addressed to its sender with its control ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hl7.util import unescape

from interop.errors import SegmentError, TableValueNotFound, UndecodableDataset

#: HL7 table 0211 (alternate character sets, MSH-18) → Python codec. An empty MSH-18 means the default
#: character set; we take UTF-8 for it (a superset of ASCII, and the one v2.8 recommends).
CHARSETS: dict[str, str] = {
    "": "utf-8",
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "ISO IR6": "ascii",
    "ISO IR100": "iso8859-1",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "GB 18030-2000": "gb18030",
}

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")


@dataclass(frozen=True)
class Header:
    """The MSH fields the receiver routes and acknowledges on (v2.5.1 §2.14.9)."""

    field_sep: str = "|"
    encoding_chars: str = "^~\\&"
    sending_application: str = ""  # MSH-3 (HD, first component)
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    message_code: str = ""  # MSH-9.1
    trigger_event: str = ""  # MSH-9.2
    message_structure: str = ""  # MSH-9.3
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11
    version: str = ""  # MSH-12
    accept_ack: str = ""  # MSH-15 (table 0155: AL, NE, ER, SU)
    application_ack: str = ""  # MSH-16 (table 0155)
    charset: str = ""  # MSH-18 (first repetition)

    @property
    def message_type(self) -> str:
        """``ORU^R01`` style (message code ^ trigger event)."""
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code

    @property
    def commit_ack(self) -> bool:
        """Enhanced mode asking for an accept acknowledgment only (v2.5.1 §2.9.3: MSH-15 given, MSH-16 empty
        or ``NE``): the sender wants to hear that the message is in safe storage, and no application ACK."""
        return bool(self.accept_ack) and self.application_ack in ("", "NE")

    @property
    def sender(self) -> str:
        """``MSH-3/MSH-4``: who a control ID is unique for (§2.14.9.10)."""
        return f"{self.sending_application}/{self.sending_facility}"


def read_header(raw: bytes) -> Header:
    """Read the MSH segment of ``raw`` (bytes, any character set: the MSH itself is ASCII in practice).

    Raises :class:`SegmentError` when the message does not start with an MSH segment (§2.5.2: MSH is
    always first) or its delimiters are unusable."""
    start = raw.lstrip(b"\r\n\t ")
    if not start.startswith(b"MSH") or len(start) < 8:
        raise SegmentError("the message does not begin with an MSH segment", expression="MSH")
    line = start.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    fs = line[3]
    fields = line.split(fs)
    enc = fields[1] if len(fields) > 1 else ""
    if fs.isalnum() or len(enc) < 2 or fs in enc or len(set(enc)) != len(enc) or any(c.isalnum() for c in enc):
        raise SegmentError("MSH-1/MSH-2 do not give usable delimiters", expression="MSH-2")
    comp, rep = enc[0], enc[1]

    def field(n: int) -> str:  # MSH-n is fields[n-1]: MSH-1 is the separator itself
        return fields[n - 1].split(rep, 1)[0] if len(fields) >= n else ""

    def component(n: int, c: int) -> str:
        parts = field(n).split(comp)
        return parts[c - 1] if len(parts) >= c else ""

    sub = enc[3] if len(enc) > 3 else "&"
    return Header(
        field_sep=fs,
        encoding_chars=enc,
        sending_application=component(3, 1).split(sub, 1)[0],
        sending_facility=component(4, 1).split(sub, 1)[0],
        receiving_application=component(5, 1).split(sub, 1)[0],
        receiving_facility=component(6, 1).split(sub, 1)[0],
        message_code=component(9, 1),
        trigger_event=component(9, 2),
        message_structure=component(9, 3),
        control_id=field(10),
        processing_id=component(11, 1),
        version=component(12, 1),
        accept_ack=field(15).strip().upper(),
        application_ack=field(16).strip().upper(),
        charset=field(18).strip(),
    )


def decode(raw: bytes, header: Header) -> str:
    """The message text in the character set MSH-18 names (v2.5.1 §2.14.9.18, table 0211).

    Raises :class:`TableValueNotFound` for a character set we do not know and :class:`UndecodableDataset`
    (HL7 AE, 102) for bytes that are not valid in it, naming the segment where the first bad byte is."""
    codec = CHARSETS.get(header.charset.upper())
    if codec is None:
        raise TableValueNotFound(f"MSH-18 character set {header.charset!r} is not supported (HL7 table 0211)",
                                 expression="MSH-18")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        segs = raw[: exc.start].replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
        current = segs[-1]
        seg_id = current[:3].decode("latin-1")
        ordinal = sum(1 for s in segs[:-1] if s[:3] == current[:3]) + 1
        field_no = current.count(header.field_sep.encode("latin-1")) + (1 if seg_id == "MSH" else 0)
        raise UndecodableDataset(
            f"byte 0x{raw[exc.start]:02X} at offset {exc.start} (segment {len(segs)}, {seg_id}) is not valid "
            f"{'UTF-8' if codec == 'utf-8' else codec} (MSH-18: {header.charset or 'empty, read as UTF-8'})",
            expression=f"{seg_id}[{ordinal}]-{field_no}" if _SEGMENT_ID.match(seg_id) else None,
        ) from None


# -- the parsed message --------------------------------------------------------------------------------------

#: A field normalised: repetitions → components → subcomponents, every leaf a string (unescaped).
Reps = list[list[list[str]]]


@dataclass(frozen=True, slots=True)
class Delimiters:
    """A message's delimiters (MSH-1, MSH-2; §2.5.4): field, component, repetition, escape, subcomponent."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    esc: str = ""  # the escape character (named as python-hl7 names it)
    subcomponent: str = ""

    @classmethod
    def of(cls, header: Header) -> Delimiters:
        enc = header.encoding_chars
        return cls(header.field_sep, enc[0], enc[1], enc[2] if len(enc) > 2 else "", enc[3] if len(enc) > 3 else "")

    @property
    def separators(self) -> str:
        """python-hl7's ``separators`` (segment, field, repetition, component, subcomponent) for its
        :func:`hl7.util.unescape`, which this module borrows for the rare field that holds an escape."""
        return "\r" + self.field + self.repetition + self.component + (self.subcomponent or "&")


class Segment:
    """One segment, with the fields addressed by their HL7 sequence numbers (``seg.value(3, 1)`` = XXX-3.1).

    A field is split into repetitions, components and subcomponents (§2.5.3) the first time it is read:
    the mapping reads a few dozen fields of a message, so nothing else is ever split."""

    __slots__ = ("id", "ordinal", "_raw", "_delims", "_fields")

    def __init__(self, line: str, delims: Delimiters, ordinal: int) -> None:
        parts = line.split(delims.field)
        self.id: str = parts[0]
        #: 1-based position among the segments with this ID (for ERR-2 locations, §2.A.ERL).
        self.ordinal = ordinal
        # MSH-1 is the field separator itself (§2.14.9.1), so MSH-n is parts[n-1]: insert it to index by n.
        self._raw = [parts[0], delims.field, *parts[1:]] if parts[0] == "MSH" else parts
        self._delims = delims
        self._fields: dict[int, Reps] = {}

    def where(self, field: int, component: int | None = None) -> str:
        """Location string ``SEG[n]-f.c`` that the ACK turns into ERR-2 (ERL)."""
        loc = f"{self.id}[{self.ordinal}]-{field}"
        return f"{loc}.{component}" if component else loc

    def field(self, n: int) -> Reps:
        """Field ``n`` as repetitions of components of subcomponents; empty list when absent or empty."""
        got = self._fields.get(n)
        if got is None:
            got = self._fields[n] = self._field(n)
        return got

    def _field(self, n: int) -> Reps:
        if n <= 0 or n >= len(self._raw):
            return []
        text = self._raw[n]
        if not text:
            return []
        if self.id == "MSH" and n <= 2:  # the delimiters themselves: never split
            return [[[text]]]
        d = self._delims
        sub = d.subcomponent
        if not (d.esc and d.esc in text):  # the common field: no escape sequence to resolve
            comp, rep_sep = d.component, d.repetition
            empty = comp + sub
            out: Reps = []
            for rep in (text.split(rep_sep) if rep_sep in text else (text,)):
                if not rep.strip(empty):  # a repetition with every leaf empty is no repetition
                    continue
                comps = rep.split(comp) if comp in rep else [rep]
                out.append([c.split(sub) if sub and sub in c else [c] for c in comps])
            return out
        reps: Reps = [
            [[self._unescape(s) for s in comp.split(sub)] if sub and sub in comp else [self._unescape(comp)]
             for comp in rep.split(d.component)]
            for rep in text.split(d.repetition)
        ]
        return [r for r in reps if any(s for c in r for s in c)]

    def value(self, n: int, component: int = 1, sub: int = 1, rep: int = 0) -> str:
        """One leaf value (``""`` when absent)."""
        reps = self.field(n)
        if rep >= len(reps):
            return ""
        comps = reps[rep]
        if component > len(comps):
            return ""
        subs = comps[component - 1]
        return subs[sub - 1] if sub <= len(subs) else ""

    def _unescape(self, text: str) -> str:
        """Escape sequences (§2.7: \\F\\, \\S\\, \\T\\, \\R\\, \\E\\, \\Xhh\\, formatting) resolved by python-hl7's
        ``unescape``; they are rare, so the common field pays one ``in`` test."""
        esc = self._delims.esc
        if not esc or esc not in text:
            return text
        return str(unescape(self._delims, text))


@dataclass
class Message:
    """A decoded, parsed message: its header and its segments in order."""

    header: Header
    text: str
    segments: list[Segment]

    def first(self, seg_id: str) -> Segment | None:
        return next((s for s in self.segments if s.id == seg_id), None)


def parse(raw: bytes, header: Header | None = None) -> Message:
    """Decode (MSH-18) and parse ``raw``; check that every segment is well formed (§2.5: a segment is a
    three-character segment ID followed by fields). Segment terminators ``\\r\\n`` and ``\\n``, which some
    senders use in place of ``\\r``, are read as ``\\r``. Fields are split only when read (:class:`Segment`)."""
    header = header or read_header(raw)
    text = decode(raw, header)
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\t ")
    delims = Delimiters.of(header)
    fs = header.field_sep
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for n, line in enumerate((ln for ln in text.split("\r") if ln), 1):
        seg_id = line[:3]
        well_formed = _SEGMENT_ID.match(seg_id) is not None
        if not well_formed or (len(line) > 3 and line[3] != fs):
            raise SegmentError(f"segment {n} ({line[:20]!r}) is not a segment ID followed by fields (§2.5)",
                               expression=f"{seg_id}[{counts.get(seg_id, 0) + 1}]" if well_formed else None)
        counts[seg_id] = counts.get(seg_id, 0) + 1
        segments.append(Segment(line, delims, counts[seg_id]))
    return Message(header=header, text=text, segments=segments)
