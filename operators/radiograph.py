"""Projection radiographs (CR/DX) as network input, and network-space maps back onto the source image.

The grayscale pipeline follows DICOM PS3.3 C.11 / C.8.11.7 and PS3.4 Annex N (grayscale transformations):

1. stored values -> Modality LUT (a Modality LUT Sequence, or Rescale Slope/Intercept, C.11.1);
2. a VOI LUT Sequence (C.11.2) when the image carries one: a vendor's non-linear tone curve is part of how the
   image is meant to be read. A linear Window Center/Width is *not* applied: it is a display hint that differs
   between vendors and only clips; the percentile window below replaces it so that the network always sees the
   same robust range whatever the window in the header (RG1_UNCI's is 15000/30000, the whole range);
3. polarity: MONOCHROME1 (minimum value displayed white) and a Presentation LUT Shape of INVERSE are inverted so
   that bone and fluid are bright, air dark (C.7.6.3.1.2; C.8.11.7 pairs MONOCHROME1 with INVERSE, the same one
   inversion);
4. a percentile window (0.5 %..99.5 % by default) to 0..1, robust to collimation borders and burned-in markers;
5. a resize that keeps the aspect ratio, centred and padded with 0 (air) to a square ("letterbox").

The training data (apps.cxr_triage.synthetic) goes through the same :func:`preprocess`, so what the network saw
in training and what it sees at inference are made the same way. Nothing here imports Holoscan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

#: Default percentile window (low, high), in percent.
WINDOW_PERCENTILES = (0.5, 99.5)

#: View positions (0018,5101) that are not frontal; a frontal chest model must not read them.
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})


class RadiographError(ValueError):
    """The dataset is not a single-frame grayscale projection radiograph this pipeline can read."""


@dataclass(frozen=True)
class Letterbox:
    """Where the source image lies inside the square network input: scaled size and the offset of its corner."""

    rows: int  # source image rows
    cols: int  # source image columns
    size: int  # side of the square network input
    height: int  # scaled image height inside the square
    width: int  # scaled image width inside the square
    top: int  # padding rows above
    left: int  # padding columns to the left

    @classmethod
    def fit(cls, rows: int, cols: int, size: int) -> Letterbox:
        """The largest aspect-keeping fit of ``rows x cols`` into ``size x size``, centred."""
        if rows < 1 or cols < 1 or size < 1:
            raise RadiographError(f"cannot fit a {rows}x{cols} image into {size}x{size}")
        scale = size / max(rows, cols)
        height = min(size, max(1, round(rows * scale)))
        width = min(size, max(1, round(cols * scale)))
        return cls(rows, cols, size, height, width, (size - height) // 2, (size - width) // 2)


@dataclass(frozen=True)
class Radiograph:
    """One radiograph ready for the network, with the identity and geometry of its source image."""

    input: np.ndarray  # float32, 1 x size x size, values 0..1
    letterbox: Letterbox
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    view_position: str | None = None


@dataclass(frozen=True)
class SourceImage:
    """A radiograph's dataset with its decoded stored values (what the image loader hands to the model)."""

    dataset: Dataset
    pixels: np.ndarray
    timing: dict[str, float] = field(default_factory=dict)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D array: area averaging when shrinking (anti-aliased), bilinear when enlarging."""
    src = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    if shrinking:
        out = F.interpolate(src, size=(height, width), mode="area")
    else:
        out = F.interpolate(src, size=(height, width), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def percentile_window(image: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> np.ndarray:
    """Map the ``percentiles`` range of ``image`` linearly onto 0..1 (clipped), float32."""
    lo, hi = np.percentile(image, percentiles)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise RadiographError("the image has no contrast (constant pixel values)")
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def preprocess(
    pixels: np.ndarray,
    size: int,
    *,
    invert: bool = False,
    slope: float = 1.0,
    intercept: float = 0.0,
    percentiles: tuple[float, float] = WINDOW_PERCENTILES,
) -> tuple[np.ndarray, Letterbox]:
    """A 2-D radiograph (stored values, or values after a non-linear LUT) -> network input ``1 x size x size``.

    The image is shrunk first (area averaging): a linear rescale and a percentile window commute with it, and
    the percentiles of the small image are computed in microseconds instead of tens of milliseconds.
    """
    if pixels.ndim != 2:
        raise RadiographError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    box = Letterbox.fit(pixels.shape[0], pixels.shape[1], size)
    small = resize(pixels, box.height, box.width)
    if slope != 1.0 or intercept != 0.0:
        small = small * np.float32(slope) + np.float32(intercept)
    window = percentile_window(small, percentiles)
    if invert:
        window = 1.0 - window
    out = np.zeros((1, size, size), np.float32)
    out[0, box.top : box.top + box.height, box.left : box.left + box.width] = window
    return out, box


def unletterbox(heatmap: np.ndarray, box: Letterbox) -> np.ndarray:
    """A map over the square network input (``size x size``) -> the source image's ``rows x cols``, float32."""
    if heatmap.shape != (box.size, box.size):
        raise ValueError(f"heat-map shape {heatmap.shape} is not the network input {box.size}x{box.size}")
    inner = heatmap[box.top : box.top + box.height, box.left : box.left + box.width]
    return resize(inner, box.rows, box.cols).astype(np.float32, copy=False)


def needs_inversion(ds: Dataset) -> bool:
    """True when low values display bright: MONOCHROME1, or a Presentation LUT Shape of INVERSE (PS3.3 C.8.11.7)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    shape = str(ds.get("PresentationLUTShape", "")).upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def is_image(ds: Dataset) -> bool:
    """True for a dataset with pixel data (not an SR, a presentation state, a KOS ...)."""
    return "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The stored values of a grayscale radiograph (first frame of a multi-frame object), decoded."""
    if not is_image(ds):
        raise RadiographError(f"SOP instance {ds.get('SOPInstanceUID')} has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RadiographError(f"not a grayscale radiograph (Photometric Interpretation {photometric or 'absent'})")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for undecodable data
        raise RadiographError(f"cannot decode the pixel data of {ds.get('SOPInstanceUID')}: {exc}") from None
    return pixels[0] if pixels.ndim == 3 else pixels  # a multi-frame object: the first frame is the radiograph


def radiograph_from_dataset(
    ds: Dataset,
    size: int,
    pixels: np.ndarray | None = None,
    percentiles: tuple[float, float] = WINDOW_PERCENTILES,
) -> Radiograph:
    """Read a CR/DX dataset's pixels through the grayscale pipeline of this module into a :class:`Radiograph`.

    ``pixels`` are the dataset's decoded stored values when the caller already has them (:func:`decode_pixels`).
    """
    if pixels is None:
        pixels = decode_pixels(ds)
    slope, intercept = 1.0, 0.0
    if "ModalityLUTSequence" in ds or "VOILUTSequence" in ds:
        values = apply_modality_lut(pixels, ds)
        if "VOILUTSequence" in ds:
            values = apply_voi(values, ds)
    else:
        values = pixels
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    image, box = preprocess(
        np.asarray(values), size, invert=needs_inversion(ds), slope=slope, intercept=intercept, percentiles=percentiles
    )
    return Radiograph(
        input=image,
        letterbox=box,
        sop_instance_uid=_str_or_none(ds.get("SOPInstanceUID")),
        series_instance_uid=_str_or_none(ds.get("SeriesInstanceUID")),
        study_instance_uid=_str_or_none(ds.get("StudyInstanceUID")),
        patient_id=_str_or_none(ds.get("PatientID")),
        modality=_str_or_none(ds.get("Modality")),
        view_position=_str_or_none(ds.get("ViewPosition")),
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None or str(value) == "" else str(value)
