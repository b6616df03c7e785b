"""Reading what the store needs from a DICOM Part 10 file (PS3.10 §7), without loading pixel data.

* :func:`read_header` parses the file meta and the attributes we index.
* :func:`check_complete` walks the data set's element structure (PS3.5 §7.1, §7.5, §A.4) and fails on a
  file cut off anywhere, including inside the pixel data, which pydicom alone accepts silently.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
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


def read_header(path: Path) -> InstanceHeader:
    """Parse the file meta and indexed attributes; raise :class:`UndecodableDataset` or
    :class:`DatasetMismatch` (PS3.4 B.2.3 statuses C210 / A900) when the file can't be stored."""
    size = path.stat().st_size
    with open(path, "rb") as fp:
        meta, offset = _meta_and_offset(fp)
        tsuid = str(meta.get("TransferSyntaxUID", "") or "").strip()
        if not tsuid:
            raise UndecodableDataset("file meta has no Transfer Syntax UID (0002,0010)")
        fp.seek(0)
        try:
            ds = dcmread(fp, stop_before_pixels=True, defer_size=4096)
        except Exception as exc:  # pydicom raises many kinds on corrupt input
            raise UndecodableDataset(f"data set could not be decoded: {exc}") from exc
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
            raise DatasetMismatch(f"data set has no {keyword}", expression=keyword)
        if len(value) > 64 or not UID(value).is_valid:
            raise DatasetMismatch(f"{keyword} {value[:70]!r} is not a valid UID (PS3.5 §9.1)", expression=keyword)
    meta_sop = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
    if meta_sop and meta_sop != sop_uid:
        raise DatasetMismatch(
            f"file meta Media Storage SOP Instance UID {meta_sop} differs from SOP Instance UID {sop_uid}",
            expression="SOPInstanceUID",
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
    """Follows element lengths through a data set; raises :class:`UndecodableDataset` on truncation."""

    def __init__(self, fp: BinaryIO, end: int, *, explicit: bool, little: bool) -> None:
        self.fp = fp
        self.end = end
        self.explicit = explicit
        self.endian = "<" if little else ">"

    def _read(self, n: int) -> bytes:
        data = self.fp.read(n)
        if len(data) != n:
            raise UndecodableDataset(f"data set is truncated at byte {self.fp.tell()} (expected {n} more bytes)")
        return data

    def _skip(self, n: int) -> None:
        pos = self.fp.tell() + n
        if pos > self.end:
            raise UndecodableDataset(
                f"data set is truncated: an element value runs to byte {pos}, the file ends at {self.end}"
            )
        self.fp.seek(pos)

    def _tag(self) -> int:
        group, elem = struct.unpack(self.endian + "HH", self._read(4))
        return (group << 16) | elem

    def dataset(self, *, until_item_delimiter: bool) -> None:
        while True:
            if not until_item_delimiter and self.fp.tell() >= self.end:
                return
            tag = self._tag()
            if tag == _ITEM_DELIM:
                self._read(4)
                if until_item_delimiter:
                    return
                continue
            if tag in (_ITEM, _SEQ_DELIM):
                raise UndecodableDataset(f"unexpected delimiter {tag:08X} at byte {self.fp.tell() - 4}")
            vr = b""
            if self.explicit and (tag >> 16) != 0xFFFE:
                vr = self._read(2)
                if vr in _LONG_VRS:
                    self._read(2)
                    (length,) = struct.unpack(self.endian + "L", self._read(4))
                else:
                    (length,) = struct.unpack(self.endian + "H", self._read(2))
            else:
                (length,) = struct.unpack(self.endian + "L", self._read(4))
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
                self._skip(length)

    def _peek_is_item(self, length: int) -> bool:
        # Implicit VR: a defined-length SQ is recognised by its first item tag.
        if length < 8:
            return False
        pos = self.fp.tell()
        head = self.fp.read(4)
        self.fp.seek(pos)
        return len(head) == 4 and struct.unpack(self.endian + "HH", head) == (0xFFFE, 0xE000)

    def _defined_sequence(self, length: int) -> None:
        stop = self.fp.tell() + length
        if stop > self.end:
            raise UndecodableDataset(f"data set is truncated inside a sequence ending at byte {stop}")
        while self.fp.tell() < stop:
            tag = self._tag()
            (item_len,) = struct.unpack(self.endian + "L", self._read(4))
            if tag != _ITEM:
                raise UndecodableDataset(f"expected an item in a sequence, found {tag:08X}")
            if item_len == _UNDEFINED:
                self.dataset(until_item_delimiter=True)
            else:
                self._skip(item_len)

    def _sequence_items(self) -> None:
        while True:
            tag = self._tag()
            (item_len,) = struct.unpack(self.endian + "L", self._read(4))
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
            (frag_len,) = struct.unpack("<L", self._read(4))
            if tag == _SEQ_DELIM:
                return
            if tag != _ITEM:
                raise UndecodableDataset(f"expected a pixel data fragment, found {tag:08X}")
            self._skip(frag_len)


def check_complete(path: Path, dataset_offset: int, transfer_syntax_uid: str) -> None:
    """Raise :class:`UndecodableDataset` unless every element of the data set is wholly present."""
    end = path.stat().st_size
    with open(path, "rb") as fp:
        fp.seek(dataset_offset)
        if transfer_syntax_uid in DEFLATED_TS:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                inflated = inflater.decompress(fp.read())
            except zlib.error as exc:
                raise UndecodableDataset(f"deflated data set is corrupt: {exc}") from exc
            if not inflater.eof:  # zlib accepts a cut stream silently; only the end marker proves it whole
                raise UndecodableDataset("deflated data set is truncated (no end of the deflate stream)")
            _Walker(io.BytesIO(inflated), len(inflated), explicit=True, little=True).dataset(until_item_delimiter=False)
            return
        walker = _Walker(
            fp,
            end,
            explicit=transfer_syntax_uid != IMPLICIT_VR_LE,
            little=transfer_syntax_uid != EXPLICIT_VR_BE,
        )
        walker.dataset(until_item_delimiter=False)


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
