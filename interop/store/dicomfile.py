"""Reading what the store needs from a DICOM Part 10 file (PS3.10 §7), without loading pixel data.

* :func:`read_header` parses the file meta and the attributes we index.
* :func:`check_complete` walks the data set's element structure (PS3.5 §7.1, §7.5, §A.4) and fails on a
  file cut off anywhere, including inside the pixel data, which pydicom alone accepts silently.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from interop.errors import DatasetMismatch, UndecodableDataset

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
#: Transfer syntaxes whose whole data set is deflated (PS3.5 §A.5): Deflated Explicit VR Little Endian and
#: JPIP Referenced Deflate. (Deflated Image *Frame* Compression, 1.2.840.10008.1.2.8.1, deflates only the
#: frames; its data set is plain Explicit VR Little Endian.)
DEFLATED_TS = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95")

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
#: Element headers by byte order: explicit VR short form, implicit VR (and items), explicit long length.
_HEADERS = {
    e: (struct.Struct(e + "HH2sH"), struct.Struct(e + "HHL"), struct.Struct(e + "L")) for e in ("<", ">")
}
_ITEM, _ITEM_DELIM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def _text(ds: Dataset, keyword: str, limit: int | None = None) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list | tuple) else str(value)
    text = text.strip()
    if not text:
        return None
    return text[:limit] if limit else text


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def name_search_key(name: str | None) -> str | None:
    """Upper-case, component-delimited form of a Person Name for case-insensitive and fuzzy matching.

    ``Doe^John`` → ``^DOE^JOHN^``; every component (and every word in one) is preceded by ``^``,
    so a prefix match on any component is ``LIKE '%^TOKEN%'``.
    """
    if not name:
        return None
    parts = [p for p in name.upper().replace("=", "^").replace(" ", "^").split("^") if p]
    return "^" + "^".join(parts) + "^" if parts else None


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The indexed attributes of one instance (PS3.18 Table 10.6.3-3/4/5 default QIDO attributes)."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    size: int
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    performed_start_date: str | None
    performed_start_time: str | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None


def _meta_and_offset(fp: BinaryIO) -> tuple[Dataset, int]:
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except (InvalidDicomError, EOFError, struct.error, ValueError, OSError) as exc:
        raise UndecodableDataset(f"not a DICOM Part 10 file: {exc}") from exc
    return meta, fp.tell()


def dataset_layout(path: Path) -> tuple[int, str]:
    """Where the data set starts in a Part 10 file and its Transfer Syntax UID (from the file meta)."""
    with open(path, "rb") as fp:
        meta, offset = _meta_and_offset(fp)
    tsuid = str(meta.get("TransferSyntaxUID", "") or "").strip()
    if not tsuid:
        raise UndecodableDataset("file meta has no Transfer Syntax UID (0002,0010)")
    return offset, tsuid


#: The attributes :class:`InstanceHeader` holds (and the character set that decodes their text).
_HEADER_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "StudyID", "StudyDescription", "ReferringPhysicianName", "Modality", "SeriesNumber", "SeriesDescription",
    "BodyPartExamined", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "InstanceNumber",
    "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)
_HEADER_TAGS = frozenset(int(tag_for_keyword(kw) or 0) for kw in _HEADER_KEYWORDS)


def _dataset(collected: Collected, tsuid: str) -> Dataset:
    """A Dataset of raw elements, decoded lazily by pydicom (with the data set's character set)."""
    implicit = tsuid == IMPLICIT_VR_LE
    little = tsuid != EXPLICIT_VR_BE
    return Dataset(
        {
            Tag(tag): RawDataElement(Tag(tag), vr, len(value), value, pos, implicit and vr is None, little)
            for tag, (vr, value, pos) in collected.items()
        }
    )


def _identity(ds: Dataset, meta: Dataset) -> tuple[str | None, str | None]:
    try:
        sop_class = _text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID")
        sop_uid = _text(ds, "SOPInstanceUID") or _text(meta, "MediaStorageSOPInstanceUID")
    except Exception:
        return None, None
    return sop_class, sop_uid


def read_header(path: Path) -> InstanceHeader:
    """Check that the data set is whole and read its indexed attributes, in one pass over the file.

    Raises :class:`UndecodableDataset` (PS3.4 B.2.3 C210) for a file that isn't Part 10 or is cut short
    anywhere, and :class:`DatasetMismatch` (A900) when an identifying UID is missing or invalid. Only the
    indexed attributes are decoded (by pydicom, with the data set's character set); nothing else is parsed.
    """
    with open(path, "rb") as fp:
        meta, offset = _meta_and_offset(fp)
        tsuid = str(meta.get("TransferSyntaxUID", "") or "").strip()
        if not tsuid:
            raise UndecodableDataset("file meta has no Transfer Syntax UID (0002,0010)")
        size = os.fstat(fp.fileno()).st_size
        collected: Collected = {}
        try:
            _walk(fp, offset, tsuid, _HEADER_TAGS, collected)
        except UndecodableDataset as exc:
            # Name the instance where its UIDs came before the fault (a data set cut in its pixel data).
            exc.identity = _identity(_dataset(collected, tsuid), meta)
            raise
    ds = _dataset(collected, tsuid)
    try:
        sop_uid = _text(ds, "SOPInstanceUID")
        sop_class = _text(ds, "SOPClassUID")
        study_uid = _text(ds, "StudyInstanceUID")
        series_uid = _text(ds, "SeriesInstanceUID")
    except Exception as exc:
        raise UndecodableDataset(f"data set could not be decoded: {exc}") from exc
    for keyword, value in (
        ("SOPInstanceUID", sop_uid),
        ("SOPClassUID", sop_class),
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
    ):
        if not value:
            raise DatasetMismatch(f"data set has no {keyword}", expression=keyword, identity=_identity(ds, meta))
        if len(value) > 64 or not UID(value).is_valid:
            raise DatasetMismatch(f"{keyword} {value[:70]!r} is not a valid UID (PS3.5 §9.1)", expression=keyword,
                                  identity=_identity(ds, meta))
    meta_sop = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
    if meta_sop and meta_sop != sop_uid:
        raise DatasetMismatch(
            f"file meta Media Storage SOP Instance UID {meta_sop} differs from SOP Instance UID {sop_uid}",
            expression="SOPInstanceUID",
            identity=(sop_class, sop_uid),
        )
    try:
        return InstanceHeader(
            sop_class_uid=sop_class,  # type: ignore[arg-type]
            sop_uid=sop_uid,  # type: ignore[arg-type]
            study_uid=study_uid,  # type: ignore[arg-type]
            series_uid=series_uid,  # type: ignore[arg-type]
            transfer_syntax_uid=tsuid,
            dataset_offset=offset,
            size=size,
            patient_id=_text(ds, "PatientID", 64),
            patient_name=_text(ds, "PatientName", 324),
            patient_birth_date=_text(ds, "PatientBirthDate", 8),
            patient_sex=_text(ds, "PatientSex", 16),
            study_date=_text(ds, "StudyDate", 8),
            study_time=_text(ds, "StudyTime", 16),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_id=_text(ds, "StudyID", 16),
            study_description=_text(ds, "StudyDescription", 64),
            referring_physician_name=_text(ds, "ReferringPhysicianName", 324),
            modality=_text(ds, "Modality", 16),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription", 64),
            body_part_examined=_text(ds, "BodyPartExamined", 16),
            performed_start_date=_text(ds, "PerformedProcedureStepStartDate", 8),
            performed_start_time=_text(ds, "PerformedProcedureStepStartTime", 16),
            instance_number=_int(ds, "InstanceNumber"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            bits_allocated=_int(ds, "BitsAllocated"),
            number_of_frames=_int(ds, "NumberOfFrames"),
        )
    except Exception as exc:
        raise UndecodableDataset(f"data set could not be decoded: {exc}") from exc


class _Walker:
    """Follows element lengths through a data set held in ``buf`` (bytes or a memory map), from ``pos`` to
    ``end``; raises :class:`UndecodableDataset` on truncation. Integer offsets and ``struct.unpack_from``:
    no I/O call per element, so it costs little on the receive path."""

    def __init__(
        self,
        buf: bytes | mmap.mmap,
        pos: int,
        end: int,
        *,
        explicit: bool,
        little: bool,
        wanted: frozenset[int] = frozenset(),
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.explicit = explicit
        self.endian = "<" if little else ">"
        #: Top-level tags whose raw values to keep: tag → (VR or None for implicit, value bytes, offset).
        self.wanted = wanted
        self.collected: dict[int, tuple[str | None, bytes, int]] = {}

    def _need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise UndecodableDataset(
                f"data set is truncated: {n} bytes needed at byte {self.pos}, the data ends at {self.end}"
            )

    def _u16(self) -> int:
        self._need(2)
        (v,) = struct.unpack_from(self.endian + "H", self.buf, self.pos)
        self.pos += 2
        return int(v)

    def _u32(self, endian: str | None = None) -> int:
        self._need(4)
        (v,) = struct.unpack_from((endian or self.endian) + "L", self.buf, self.pos)
        self.pos += 4
        return int(v)

    def _skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise UndecodableDataset(
                f"data set is truncated: an element value runs to byte {self.pos + n}, the data ends at {self.end}"
            )
        self.pos += n

    def _tag(self) -> int:
        self._need(4)
        group, elem = struct.unpack_from(self.endian + "HH", self.buf, self.pos)
        self.pos += 4
        return int((group << 16) | elem)

    def dataset(self, *, until_item_delimiter: bool) -> None:
        # The hot loop: one unpack per element header (PS3.5 §7.1.2 explicit, §7.1.3 implicit).
        buf, end = self.buf, self.end
        explicit_hdr, implicit_hdr, long_len = _HEADERS[self.endian]
        while True:
            pos = self.pos
            if not until_item_delimiter and pos >= end:
                return
            if pos + 8 > end:
                raise UndecodableDataset(f"data set is truncated inside an element header at byte {pos}")
            vr = b""
            group, elem, length = implicit_hdr.unpack_from(buf, pos)
            tag = (group << 16) | elem
            if self.explicit and group != 0xFFFE:
                group, elem, vr, length = explicit_hdr.unpack_from(buf, pos)
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise UndecodableDataset(f"data set is truncated inside an element header at byte {pos}")
                    (length,) = long_len.unpack_from(buf, pos + 8)
                    self.pos = pos + 12
                else:
                    self.pos = pos + 8
            else:
                self.pos = pos + 8
            if tag == _ITEM_DELIM:
                if until_item_delimiter:
                    return
                continue
            if tag in (_ITEM, _SEQ_DELIM):
                raise UndecodableDataset(f"unexpected delimiter {tag:08X} at byte {pos}")
            if length == _UNDEFINED:
                if tag == 0x7FE00010:
                    self._fragments()
                elif vr == b"UN":
                    self._implicit_sequence_items()
                else:
                    self._sequence_items()
            elif vr == b"SQ" or (not self.explicit and tag != 0x7FE00010 and self._peek_is_item(length)):
                self._defined_sequence(length)
            else:
                if tag in self.wanted and not until_item_delimiter:
                    self._need(length)
                    value = bytes(buf[self.pos : self.pos + length])
                    self.collected[tag] = (vr.decode("ascii", "replace") if vr else None, value, self.pos)
                self._skip(length)

    def _peek_is_item(self, length: int) -> bool:
        # Implicit VR: a defined-length SQ is recognised by its first item tag.
        if length < 8 or self.pos + 4 > self.end:
            return False
        return struct.unpack_from(self.endian + "HH", self.buf, self.pos) == (0xFFFE, 0xE000)

    def _defined_sequence(self, length: int) -> None:
        stop = self.pos + length
        if stop > self.end:
            raise UndecodableDataset(f"data set is truncated inside a sequence ending at byte {stop}")
        while self.pos < stop:
            tag = self._tag()
            item_len = self._u32()
            if tag != _ITEM:
                raise UndecodableDataset(f"expected an item in a sequence, found {tag:08X}")
            if item_len == _UNDEFINED:
                self.dataset(until_item_delimiter=True)
            else:
                self._skip(item_len)

    def _sequence_items(self) -> None:
        while True:
            tag = self._tag()
            item_len = self._u32()
            if tag == _SEQ_DELIM:
                return
            if tag != _ITEM:
                raise UndecodableDataset(f"expected an item or sequence delimiter, found {tag:08X}")
            if item_len == _UNDEFINED:
                self.dataset(until_item_delimiter=True)
            else:
                self._skip(item_len)

    def _implicit_sequence_items(self) -> None:
        # PS3.5 §6.2.2: a UN value of undefined length is a sequence whose items are Implicit VR Little Endian,
        # whatever the transfer syntax of the data set around it.
        saved = self.explicit, self.endian
        self.explicit, self.endian = False, "<"
        try:
            self._sequence_items()
        finally:
            self.explicit, self.endian = saved

    def _fragments(self) -> None:
        while True:
            tag = self._tag()
            frag_len = self._u32("<")
            if tag == _SEQ_DELIM:
                return
            if tag != _ITEM:
                raise UndecodableDataset(f"expected a pixel data fragment, found {tag:08X}")
            self._skip(frag_len)


Collected = dict[int, tuple[str | None, bytes, int]]


def _walk(
    fp: BinaryIO,
    dataset_offset: int,
    transfer_syntax_uid: str,
    wanted: frozenset[int] = frozenset(),
    collected: Collected | None = None,
) -> Collected:
    """Walk the data set of an open Part 10 file; return the raw values of ``wanted`` top-level tags.

    ``collected`` (filled as the walk goes) keeps what was read before a failure."""
    collected = {} if collected is None else collected
    end = os.fstat(fp.fileno()).st_size
    if end <= dataset_offset:
        raise UndecodableDataset("the file holds no data set after its file meta")
    if transfer_syntax_uid in DEFLATED_TS:
        fp.seek(dataset_offset)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(fp.read())
        except zlib.error as exc:
            raise UndecodableDataset(f"deflated data set is corrupt: {exc}") from exc
        if not inflater.eof:  # zlib accepts a cut stream silently; only the end marker proves it whole
            raise UndecodableDataset("deflated data set is truncated (no end of the deflate stream)")
        walker = _Walker(inflated, 0, len(inflated), explicit=True, little=True, wanted=wanted)
        walker.collected = collected
        walker.dataset(until_item_delimiter=False)
        return collected
    with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        walker = _Walker(
            buf,
            dataset_offset,
            end,
            explicit=transfer_syntax_uid != IMPLICIT_VR_LE,
            little=transfer_syntax_uid != EXPLICIT_VR_BE,
            wanted=wanted,
        )
        walker.collected = collected
        walker.dataset(until_item_delimiter=False)
        return collected


def check_complete(path: Path, dataset_offset: int, transfer_syntax_uid: str) -> None:
    """Raise :class:`UndecodableDataset` unless every element of the data set is wholly present."""
    with open(path, "rb") as fp:
        _walk(fp, dataset_offset, transfer_syntax_uid)


def same_dataset(a: BinaryIO, a_offset: int, b: BinaryIO, b_offset: int, chunk: int = 1 << 20) -> bool:
    """True when two Part 10 files carry byte-identical data sets (file meta ignored)."""
    a.seek(a_offset)
    b.seek(b_offset)
    while True:
        x, y = a.read(chunk), b.read(chunk)
        if x != y:
            return False
        if not x:
            return True
