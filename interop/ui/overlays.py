"""Overlays the worklist stacks on a rendered image: a finding's heat-map and one slice of a segmentation's
label map, each as a transparent RGBA picture of the same size as the rendered frame.

Pure: arrays in, arrays or PNG bytes out.

- *Heat-map* (float, rows x columns of the source, 0..1 by the AppResult contract): the same colour ramp and
  floor as the heat-map Secondary Capture the node writes back (:mod:`interop.writeback.heatmap`), so the page
  and the PACS show one picture. Below :data:`~interop.writeback.heatmap.FLOOR` the pixel is transparent;
  above it the colour's alpha grows with the value up to opaque, and the page's opacity slider (default
  :data:`~interop.writeback.heatmap.MAX_ALPHA`) scales it, which makes the default view the capture's blend.
- *Label map slice* (uint8, 0 = background): one colour per segment number from :data:`PALETTE`, opaque where
  labelled; the page's opacity slider sets how much of the image shows through.

Sizes follow WADO-RS rendered (PS3.18 §8.3.5.1.3, ``viewport=vw,vh``): the picture is scaled to fit
``vw`` x ``vh`` keeping its aspect ratio, the arithmetic :func:`interop.dicomweb.pixels.render` uses, so an
overlay asked for with the viewport of the rendered frame has the frame's pixel size.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from interop.writeback.heatmap import FLOOR, MAX_ALPHA, RAMP

__all__ = ["DEFAULT_OPACITY", "PALETTE", "best_frame", "fitted_size", "heatmap_ramp", "heatmap_rgba", "hex_colour",
           "labels_rgba", "png", "segment_colour"]

#: The page's initial overlay opacity: the heat-map capture's maximum blend.
DEFAULT_OPACITY = MAX_ALPHA

#: Segment colours by segment number (1 -> PALETTE[0], wrapping): a qualitative palette whose neighbours
#: differ in hue and lightness (Tableau 10, then the lighter Tableau 20 tints).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141),
    (158, 218, 229), (199, 199, 199),
)


def fitted_size(width: int, height: int, viewport: tuple[int, int] | None) -> tuple[int, int]:
    """``width`` x ``height`` scaled to fit ``viewport`` (vw, vh) keeping the aspect ratio; unchanged without
    one. The same rounding as the rendered resource's, so the overlay matches the frame pixel for pixel."""
    if viewport is None:
        return width, height
    vw, vh = viewport
    scale = min(vw / width, vh / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _ramp_lut() -> np.ndarray:
    """256 x 4 uint8: index i is the colour of t = i/255 above the floor, with alpha i."""
    t = np.linspace(0.0, 1.0, 256, dtype=np.float64)
    positions = [p for p, _ in RAMP]
    lut = np.empty((256, 4), dtype=np.uint8)
    for c in range(3):
        lut[:, c] = np.rint(np.interp(t, positions, [rgb[c] for _, rgb in RAMP]))
    lut[:, 3] = np.arange(256, dtype=np.uint8)
    return lut


_HEAT_LUT = _ramp_lut()


def heatmap_rgba(heat: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """``heat`` (rows x columns, 0..1) as rows x columns x 4 uint8 RGBA, resampled (bilinear) to ``size``
    (width, height) when given: transparent at or below the floor, then the ramp with rising alpha."""
    if heat.ndim != 2:
        raise ValueError(f"a heat-map is 2-D (rows x columns), not {heat.shape}")
    values = np.asarray(heat, dtype=np.float32)
    if size is not None and size != (values.shape[1], values.shape[0]):
        values = np.asarray(Image.fromarray(values).resize(size, Image.Resampling.BILINEAR))
    t = np.clip((values - np.float32(FLOOR)) * np.float32(255.0 / (1.0 - FLOOR)), 0.0, 255.0)
    index = np.rint(t).astype(np.uint8)
    index[values <= FLOOR] = 0
    return _HEAT_LUT[index]


def segment_colour(number: int) -> tuple[int, int, int]:
    """The colour of segment ``number`` (1..255)."""
    return PALETTE[(number - 1) % len(PALETTE)]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _label_lut() -> np.ndarray:
    lut = np.zeros((256, 4), dtype=np.uint8)
    for n in range(1, 256):
        lut[n, :3] = segment_colour(n)
        lut[n, 3] = 255
    return lut


_LABEL_LUT = _label_lut()


def labels_rgba(labels: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A 2-D label map (0 = background) as RGBA, each segment in its :func:`segment_colour`, opaque; resampled
    with nearest neighbour to ``size`` (width, height) when given."""
    if labels.ndim != 2:
        raise ValueError(f"a label map slice is 2-D (rows x columns), not {labels.shape}")
    values = np.asarray(labels, dtype=np.uint8)
    if size is not None and size != (values.shape[1], values.shape[0]):
        values = np.asarray(Image.fromarray(values).resize(size, Image.Resampling.NEAREST))
    return _LABEL_LUT[values]


def best_frame(labels: np.ndarray) -> int:
    """The index of the frame of a label map (frames x rows x columns) with the most labelled pixels (the
    middle frame when none is labelled): where a reader starts looking."""
    if labels.ndim != 3 or labels.shape[0] == 0:
        raise ValueError(f"a label map is frames x rows x columns, not {labels.shape}")
    counts = np.count_nonzero(labels.reshape(labels.shape[0], -1), axis=1)
    return int(np.argmax(counts)) if counts.any() else labels.shape[0] // 2


def heatmap_ramp() -> list[tuple[float, str]]:
    """The heat-map colour ramp as (heat value, colour) stops, for the page's legend."""
    return [(round(FLOOR + p * (1.0 - FLOOR), 3), hex_colour(rgb)) for p, rgb in RAMP]


def png(rgba: np.ndarray) -> bytes:
    """RGBA as PNG; zlib level 1: the maps are smooth or flat, so it is small and quick to make."""
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
