"""Pixel data of stored instances: frames as stored or decoded, rendering, transcoding.

Frames are read straight from the stored file where the layout allows (native little-endian pixel data
at a known offset; encapsulated fragments through the Basic or Extended Offset Table), so a frame of a
large multi-frame instance costs one frame's bytes. Everything else goes through pydicom's decoders
(``pydicom.pixels``, with pylibjpeg for JPEG, JPEG-LS and JPEG 2000).

Rendering follows the grayscale pipeline of PS3.4 Annex N.2 (Modality LUT, then VOI LUT or window,
then polarity) with the window functions of PS3.3 C.11.2.1.2, and the rendered-resource parameters of
PS3.18 §8.3.5.1 (``window``, ``viewport``, ``quality``).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import UID

from interop.dicomweb.media import DEFLATED_LE, EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE, NATIVE_TS
from interop.dicomweb.multipart import file_chunks
from interop.errors import InvalidInput, NotAcceptable, NotFound, UndecodableDataset
from interop.store.blobs import BlobStore

_PIXEL_DATA = (0x7FE0, 0x0010)
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class PixelLayout:
    """Where the Pixel Data (7FE0,0010) of a stored file lies and how it is framed."""

    transfer_syntax: str
    vr: str
    frames: int
    #: File offset of the value; ``None`` when it can't be addressed in the file (deflated).
    value_offset: int | None
    #: Value length; ``None`` for encapsulated (undefined-length) pixel data.
    length: int | None
    #: Bytes per native frame when frames are byte-aligned; else ``None``.
    frame_bytes: int | None
    #: Bits Allocated (0028,0100); Rows, Columns, Samples per Pixel.
    bits_allocated: int = 0
    shape: tuple[int, int, int] = (0, 0, 1)

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax not in NATIVE_TS

    @property
    def frame_bits(self) -> int | None:
        """Bits per frame of native single-bit pixel data (BINARY SEG); ``None`` for any other data.

        PS3.5 §8.1.1: such frames are packed one after another, least significant bit first, so a frame
        starts on a byte boundary only when its pixel count is a multiple of 8."""
        if self.bits_allocated != 1 or self.encapsulated:
            return None
        rows, cols, spp = self.shape
        return rows * cols * spp

    @property
    def bit_frames_direct(self) -> bool:
        """True when single-bit frames can be cut out of the file's bits as they are (little-endian)."""
        return (
            self.frame_bits is not None
            and self.transfer_syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
            and self.value_offset is not None
        )

    @property
    def direct(self) -> bool:
        """True when native frames can be read from the file as they are (little-endian, byte-aligned)."""
        return (
            not self.encapsulated
            and self.transfer_syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
            and self.value_offset is not None
            and self.frame_bytes is not None
        )


def read_layout(fp: BinaryIO) -> PixelLayout | None:
    """The :class:`PixelLayout` of the Part 10 file ``fp``; ``None`` when it has no Pixel Data."""
    ds = dcmread(fp, stop_before_pixels=True)
    ts = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LE))
    frames = int(ds.get("NumberOfFrames") or 1)
    bits = int(ds.get("BitsAllocated") or 0)
    rows, cols, spp = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(ds.get("SamplesPerPixel") or 1)
    native_frame = rows * cols * spp * bits // 8 if bits and bits % 8 == 0 else None
    shape = (rows, cols, spp)
    if ts == DEFLATED_LE:
        if "Rows" not in ds:
            return None
        return PixelLayout(ts, "OW" if bits > 8 else "OB", frames, None, None, native_frame, bits, shape)
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    endian = ">" if ts == EXPLICIT_VR_BE else "<"
    if struct.unpack(endian + "HH", head[:4]) != _PIXEL_DATA:
        return None  # Float / Double Float Pixel Data: not framed here
    if ts == IMPLICIT_VR_LE:
        vr = "OW" if bits > 8 else "OB"
        (length,) = struct.unpack(endian + "L", head[4:8])
        offset = pos + 8
    else:
        vr = head[4:6].decode("ascii", "replace")
        (length,) = struct.unpack(endian + "L", head[8:12])
        offset = pos + 12
    if length == _UNDEFINED:
        return PixelLayout(ts, vr, frames, offset, None, None, bits, shape)
    return PixelLayout(ts, vr, frames, offset, length, native_frame, bits, shape)


@lru_cache(maxsize=4096)
def layout_of(blobs: BlobStore, blob_key: str) -> PixelLayout | None:
    """Cached :func:`read_layout` of a stored object (stored objects never change under a key)."""
    with blobs.open(blob_key) as fp:
        try:
            return read_layout(fp)
        except Exception as exc:  # stored files passed validation; this is defensive
            raise UndecodableDataset(f"stored object {blob_key} can't be read: {exc}") from exc


def check_frames(numbers: list[int], layout: PixelLayout) -> None:
    bad = [n for n in numbers if n < 1 or n > layout.frames]
    if bad:
        raise NotFound(f"frame(s) {bad} not in this instance, which has {layout.frames} frame(s)")


def parse_frame_list(text: str) -> list[int]:
    """``1,3,4`` → ``[1, 3, 4]`` (PS3.18 §10.4.1.1.4: frame numbers start at 1)."""
    try:
        numbers = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InvalidInput(f"frame list {text!r} is not a list of numbers", expression="frames") from None
    if not numbers:
        raise InvalidInput("empty frame list", expression="frames")
    return numbers


def _little_endian_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _bit_frame(fp: BinaryIO, layout: PixelLayout, index: int) -> np.ndarray:
    """Frame ``index`` of native single-bit pixel data as one 0/1 byte per pixel, read from its bits in the file
    (frames after the first need not start on a byte boundary, PS3.5 §8.1.1)."""
    bits = layout.frame_bits
    assert bits is not None and layout.value_offset is not None
    first = index * bits
    fp.seek(layout.value_offset + first // 8)
    data = fp.read((first % 8 + bits + 7) // 8)
    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return unpacked[first % 8: first % 8 + bits]


def _pack_bits(arr: np.ndarray) -> bytes:
    """Single-bit pixels as the native encoding of one frame: packed least significant bit first, the frame
    padded with zero bits to a whole byte (a frame sent on its own starts on a byte boundary)."""
    return np.packbits(np.asarray(arr, dtype=np.uint8).ravel() & 1, bitorder="little").tobytes()


def decoded_frame(blobs: BlobStore, blob_key: str, index: int, layout: PixelLayout | None = None) -> np.ndarray:
    """Frame ``index`` (0-based) decoded to an array (YBR converted to RGB), no LUTs applied; ``layout`` (the
    file's :class:`PixelLayout`) lets single-bit frames be read without decoding the others."""
    with blobs.open(blob_key) as fp:
        try:
            if layout is not None and layout.bit_frames_direct:
                rows, cols, spp = layout.shape
                frame = _bit_frame(fp, layout, index)
                return frame.reshape((rows, cols, spp) if spp > 1 else (rows, cols))
            if layout is not None and layout.frame_bits is not None:
                # pydicom decodes single frames of bit-packed data from whole bytes: decode all, take one.
                return np.asarray(pixel_array(fp))[index] if layout.frames > 1 else pixel_array(fp)
            return pixel_array(fp, index=index)
        except Exception as exc:
            raise NotAcceptable(f"pixel data can't be decoded here: {exc}") from exc


def frame_bytes(
    blobs: BlobStore, blob_key: str, layout: PixelLayout, index: int, *, decode: bool, header: Dataset
) -> bytes:
    """The bytes of frame ``index`` (0-based): as stored, or uncompressed little-endian with ``decode``.

    Native single-bit frames (BINARY SEG) go out packed, each on its own starting at bit 0 of its first byte and
    padded to a whole byte: the frame's own native encoding, whatever its offset inside the stored value."""
    if layout.frame_bits is not None:
        if layout.bit_frames_direct:
            with blobs.open(blob_key) as fp:
                return _pack_bits(_bit_frame(fp, layout, index))
        return _pack_bits(decoded_frame(blobs, blob_key, index, layout))
    if layout.direct and layout.frame_bytes is not None and layout.value_offset is not None:
        with blobs.open(blob_key) as fp:
            fp.seek(layout.value_offset + index * layout.frame_bytes)
            return fp.read(layout.frame_bytes)
    if layout.encapsulated and not decode and layout.value_offset is not None:
        extended: Any = None
        if "ExtendedOffsetTable" in header and "ExtendedOffsetTableLengths" in header:
            extended = (header.ExtendedOffsetTable, header.ExtendedOffsetTableLengths)
        with blobs.open(blob_key) as fp:
            fp.seek(layout.value_offset)
            return bytes(get_frame(fp, index, extended_offsets=extended, number_of_frames=layout.frames))
    return _little_endian_bytes(decoded_frame(blobs, blob_key, index))


def native_pixel_chunks(blobs: BlobStore, blob_key: str, layout: PixelLayout, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The whole native Pixel Data value, little-endian, in chunks (the Pixel Data bulk data resource)."""
    if layout.length is not None and layout.value_offset is not None and layout.transfer_syntax in (
        EXPLICIT_VR_LE,
        IMPLICIT_VR_LE,
    ):
        yield from file_chunks(blobs.open(blob_key), layout.value_offset, layout.length, chunk)
        return
    with blobs.open(blob_key) as fp:
        ds = dcmread(fp)
        yield _little_endian_bytes(ds.pixel_array)


def to_explicit_vr_little_endian(fp: BinaryIO) -> bytes:
    """The Part 10 file ``fp`` re-encoded in Explicit VR Little Endian, decompressing pixel data
    (PS3.18 §8.7.3.5.2: the default transfer syntax of ``application/dicom``). Loads the whole file."""
    ds = dcmread(fp)
    ts = ds.file_meta.TransferSyntaxUID
    try:
        if ts.is_compressed:
            ds.decompress()
        elif ts == EXPLICIT_VR_BE and "PixelData" in ds:
            ds.PixelData = _little_endian_bytes(ds.pixel_array)
    except Exception as exc:
        raise NotAcceptable(f"can't convert from transfer syntax {ts} here: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
    buf = io.BytesIO()
    dcmwrite(buf, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


# -- rendering (PS3.4 N.2, PS3.3 C.11.2.1.2, PS3.18 §8.3.5.1) ----------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    quality: int = 90
    #: (center, width, function) from the ``window`` parameter; ``None``: the instance's own VOI.
    window: tuple[float, float, str] | None = None
    #: (vw, vh) or (vw, vh, sx, sy, sw, sh) from the ``viewport`` parameter.
    viewport: tuple[int, ...] | None = None


def parse_render_options(media_type: str, quality: str | None, window: str | None,
                         viewport: str | None) -> RenderOptions:
    """Check the rendered-resource query parameters (PS3.18 §8.3.5.1); :class:`InvalidInput` if malformed."""
    q = 90
    if quality is not None:
        try:
            q = int(quality)
        except ValueError:
            raise InvalidInput("quality must be an integer 1-100", expression="quality") from None
        if not 1 <= q <= 100:
            raise InvalidInput("quality must be 1-100", expression="quality")
    win: tuple[float, float, str] | None = None
    if window is not None:
        parts = [p.strip() for p in window.split(",")]
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise InvalidInput("window must be center,width[,function]", expression="window") from None
        function = (parts[2] if len(parts) > 2 and parts[2] else "linear").lower().replace("_", "-")
        if function not in ("linear", "linear-exact", "sigmoid") or width <= 0:
            raise InvalidInput("window function must be linear, linear-exact or sigmoid, width > 0",
                               expression="window")
        win = (center, width, function)
    vp: tuple[int, ...] | None = None
    if viewport is not None:
        try:
            vp = tuple(int(float(p)) if p.strip() else 0 for p in viewport.split(","))
        except ValueError:
            raise InvalidInput("viewport must be vw,vh[,sx,sy,sw,sh]", expression="viewport") from None
        if len(vp) not in (2, 6) or vp[0] <= 0 or vp[1] <= 0:
            raise InvalidInput("viewport must be vw,vh[,sx,sy,sw,sh] with positive vw, vh", expression="viewport")
    return RenderOptions(media_type, q, win, vp)


def window_to_8bit(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """A VOI window as 0..255 (PS3.3 C.11.2.1.2.1 LINEAR, C.11.2.1.3.2 LINEAR_EXACT, C.11.2.1.3.1 SIGMOID)."""
    x = x.astype(np.float64)
    if function == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "linear-exact":
        y = (x - center) / width + 0.5
    elif width <= 1:
        y = (x > center - 0.5).astype(np.float64)
    else:
        y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def _first(value: Any) -> float:
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(value, str | bytes)):
        value = list(value)[0]
    return float(value)


def _min_max(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if not math.isfinite(lo) or hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.clip(np.rint((x.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def to_display(arr: np.ndarray, ds: Dataset, window: tuple[float, float, str] | None) -> np.ndarray:
    """A decoded frame as 8-bit grayscale or RGB for display."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # colour: no VOI; scale deeper samples down
        if arr.dtype == np.uint8:
            return arr
        top = float(np.max(arr)) or 1.0
        bits = int(ds.get("BitsStored") or 8)
        scale = float((1 << bits) - 1) if top <= (1 << bits) - 1 else top
        return np.clip(np.rint(arr.astype(np.float64) * 255.0 / scale), 0, 255).astype(np.uint8)
    values = apply_modality_lut(arr, ds)
    if window is not None:
        out = window_to_8bit(values, *window)
    elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None and ds.WindowWidth:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").lower().replace("_", "-")
        out = window_to_8bit(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    elif "VOILUTSequence" in ds:
        out = _min_max(apply_voi_lut(values, ds))
    else:
        out = _min_max(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def render(arr: np.ndarray, ds: Dataset, options: RenderOptions) -> bytes:
    """Encode a decoded frame as JPEG or PNG after the display pipeline and the viewport."""
    image = Image.fromarray(to_display(arr, ds, options.window))
    if options.viewport is not None:
        vw, vh = options.viewport[0], options.viewport[1]
        if len(options.viewport) == 6:
            sx, sy, sw, sh = options.viewport[2:]
            sw = sw or image.width - sx
            sh = sh or image.height - sy
            image = image.crop((sx, sy, sx + sw, sy + sh))
        scale = min(vw / image.width, vh / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if options.media_type == "image/png":
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=options.quality)
    return buf.getvalue()
