"""Media types and transfer syntaxes of DICOMweb (PS3.18 §8.7): Accept parsing and negotiation.

Pure functions, no I/O. The rules we follow:

* ``transfer-syntax=*`` means "as stored" (PS3.18 §8.7.3.5.2); an absent ``transfer-syntax`` parameter means
  the media type's default, Explicit VR Little Endian for ``application/dicom`` and uncompressed
  little-endian bytes for ``application/octet-stream`` (PS3.18 Table 8.7.3-2 / -3);
* ``*/*`` (or no Accept at all) asks for the default media type of the resource (PS3.18 §8.7.5);
* ranges are tried in order of their ``q`` value, then of appearance (RFC 9110 §12.5.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interop.errors import InvalidInput, NotAcceptable, UnsupportedMediaType

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
#: Transfer syntaxes whose pixel data is native (not encapsulated).
NATIVE_TS = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_LE})

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"

#: Media type of a frame / pixel-data part by transfer syntax (PS3.18 Table 8.7.3-4, -5).
PIXEL_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.5": ("image/dicom-rle", "image/x-dicom-rle"),
    "1.2.840.10008.1.2.4.50": ("image/jpeg",),
    "1.2.840.10008.1.2.4.51": ("image/jpeg",),
    "1.2.840.10008.1.2.4.57": ("image/jpeg",),
    "1.2.840.10008.1.2.4.70": ("image/jpeg",),
    "1.2.840.10008.1.2.4.80": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.81": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.90": ("image/jp2",),
    "1.2.840.10008.1.2.4.91": ("image/jp2",),
    "1.2.840.10008.1.2.4.92": ("image/jpx",),
    "1.2.840.10008.1.2.4.93": ("image/jpx",),
    "1.2.840.10008.1.2.4.201": ("image/jphc",),
    "1.2.840.10008.1.2.4.202": ("image/jphc",),
    "1.2.840.10008.1.2.4.203": ("image/jphc",),
    "1.2.840.10008.1.2.4.100": ("video/mpeg2",),
    "1.2.840.10008.1.2.4.101": ("video/mpeg2",),
    "1.2.840.10008.1.2.4.102": ("video/mp4",),
    "1.2.840.10008.1.2.4.103": ("video/mp4",),
    "1.2.840.10008.1.2.4.104": ("video/mp4",),
    "1.2.840.10008.1.2.4.105": ("video/mp4",),
    "1.2.840.10008.1.2.4.106": ("video/mp4",),
}


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header (RFC 9110 §12.5.1), with DICOMweb's parameters."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def is_any(self) -> bool:
        return self.type in ("*/*", "*")

    @property
    def is_multipart(self) -> bool:
        return self.type == MULTIPART

    @property
    def part_type(self) -> str:
        """The media type of the parts: ``type`` of a multipart range, else the range itself."""
        if self.is_multipart:
            return self.params.get("type", "*/*").lower() or "*/*"
        return self.type

    @property
    def transfer_syntax(self) -> str | None:
        ts = self.params.get("transfer-syntax")
        return ts.strip() if ts else None


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_media_type(text: str) -> MediaRange:
    """``type/subtype; a=b; c="d"`` as a :class:`MediaRange` (names lower-cased, values unquoted)."""
    head, *rest = _split(text, ";")
    params: dict[str, str] = {}
    q = 1.0
    for item in rest:
        name, eq, value = item.partition("=")
        if not eq:
            continue
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                raise InvalidInput(f"bad quality value {value!r} in media range {text.strip()!r}") from None
        else:
            params[name] = value
    return MediaRange(head.strip().lower(), params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The acceptable media ranges, best first; no header means ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(part) for part in _split(header, ",") if part.strip()]
    ranges = [r for r in ranges if r.q > 0]
    if not ranges:
        raise InvalidInput("the Accept header accepts nothing (every range has q=0)")
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: equal q keeps header order


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return pattern == media_type


# -- application/dicom (PS3.18 §8.7.3.1) -----------------------------------------------------------------


def dicom_transfer_syntax(ranges: list[MediaRange]) -> str | None:
    """The transfer syntax in which to send Part 10 instances: a UID, or ``None`` for "as stored".

    Raises :class:`~interop.errors.NotAcceptable` when no range asks for ``application/dicom``.
    """
    for r in ranges:
        if r.is_multipart or r.type == DICOM or r.is_any:
            part = r.part_type if r.is_multipart else (DICOM if r.is_any else r.type)
            if not _type_matches(part, DICOM):
                continue
            ts = r.transfer_syntax
            if ts == "*":
                return None
            return ts or EXPLICIT_VR_LE
    raise NotAcceptable('this resource is available as multipart/related; type="application/dicom" only')


# -- frames and pixel data (PS3.18 §8.7.3.3, §8.7.3.4) ---------------------------------------------------


@dataclass(frozen=True)
class PixelPlan:
    """How to send pixel data: the part media type, its transfer syntax, and whether to decode it."""

    media_type: str
    transfer_syntax: str
    decode: bool

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def pixel_plan(ranges: list[MediaRange], stored_ts: str) -> PixelPlan | None:
    """Choose how to send frames stored in ``stored_ts``; ``None`` when nothing acceptable can be made.

    Native data goes out as ``application/octet-stream`` (Explicit VR Little Endian bytes). Compressed
    data goes out as stored when a range allows it (its own media type, or octet-stream with
    ``transfer-syntax=*``), and otherwise decoded to uncompressed octet-stream.
    """
    native = stored_ts in NATIVE_TS
    own_types = PIXEL_MEDIA_TYPES.get(stored_ts, ())
    for r in ranges:
        part = "*/*" if r.is_any else r.part_type
        ts = r.transfer_syntax
        if native:
            if _type_matches(part, OCTET_STREAM) and ts in (None, "*", EXPLICIT_VR_LE):
                return PixelPlan(OCTET_STREAM, EXPLICIT_VR_LE, decode=False)
            continue
        own = [t for t in own_types if _type_matches(part, t)]
        if ts in ("*", stored_ts) or (ts is None and part != "*/*"):
            if own:
                return PixelPlan(own[0], stored_ts, decode=False)
            if ts is not None and _type_matches(part, OCTET_STREAM):
                return PixelPlan(OCTET_STREAM, stored_ts, decode=False)
        if ts in (None, EXPLICIT_VR_LE) and _type_matches(part, OCTET_STREAM):
            return PixelPlan(OCTET_STREAM, EXPLICIT_VR_LE, decode=True)
    return None


# -- rendered (PS3.18 §8.7.4) -----------------------------------------------------------------------------

RENDERED_TYPES = ("image/jpeg", "image/png")


def rendered_media_type(ranges: list[MediaRange]) -> str | None:
    """``image/jpeg`` (the default) or ``image/png``, whichever the client accepts first."""
    for r in ranges:
        part = r.part_type if r.is_multipart else r.type
        for t in RENDERED_TYPES:
            if _type_matches(part, t):
                return t
    return None


# -- request bodies ---------------------------------------------------------------------------------------


def stow_boundary(content_type: str | None) -> bytes:
    """The boundary of a STOW-RS request body (PS3.18 §10.5.1: ``multipart/related; type="application/dicom"``).

    Raises :class:`UnsupportedMediaType` for another media type (415) and :class:`InvalidInput` for a
    multipart type without a boundary (400).
    """
    if not content_type:
        raise UnsupportedMediaType('Content-Type is required: multipart/related; type="application/dicom"')
    mt = parse_media_type(content_type)
    if mt.type != MULTIPART:
        raise UnsupportedMediaType(
            f'Content-Type {mt.type} is not supported; send multipart/related; type="application/dicom"'
        )
    part = mt.params.get("type", DICOM).lower()
    if part != DICOM:
        raise UnsupportedMediaType(
            f'multipart/related; type="{part}" is not supported; this origin server stores '
            'type="application/dicom" (PS3.10 instances) only'
        )
    boundary = mt.params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise InvalidInput("multipart/related Content-Type without a valid boundary parameter")
    return boundary.encode("latin-1")
