"""The overlays' pictures (interop.ui.overlays): pure, no server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from interop.dicomweb.pixels import parse_render_options, render
from interop.ui import overlays
from interop.writeback.heatmap import FLOOR, RAMP


@pytest.mark.parametrize("viewport", [(300, 200), (64, 512), (1024, 1024), (7, 7)])
def test_fitted_size_is_the_size_of_the_rendered_frame(viewport: tuple[int, int]) -> None:
    ds = dcmread(str(get_testdata_file("CT_small.dcm")))
    frame = render(ds.pixel_array, ds, parse_render_options("image/png", None, None, "{},{}".format(*viewport)))
    assert Image.open(io.BytesIO(frame)).size == overlays.fitted_size(int(ds.Columns), int(ds.Rows), viewport)


def test_heatmap_is_transparent_at_or_below_the_floor_and_ramps_to_opaque_red() -> None:
    heat = np.array([[0.0, FLOOR, FLOOR + 0.01, 1.0]], dtype=np.float32)
    rgba = overlays.heatmap_rgba(heat)
    assert rgba.shape == (1, 4, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0
    r, g, b, a = rgba[0, 2]
    assert 0 < a < 5 and (r, b) == (0, 255) and g < 20  # just above the floor: faint blue
    assert tuple(rgba[0, 3]) == (*RAMP[-1][1], 255)  # the top: opaque red


def test_heatmap_is_resampled_to_the_asked_size() -> None:
    heat = np.zeros((1955, 1841), dtype=np.float32)
    heat[900:1100, 800:1000] = 1.0
    rgba = overlays.heatmap_rgba(heat, overlays.fitted_size(1841, 1955, (512, 512)))
    assert rgba.shape == (512, 482, 4)
    hot = np.argwhere(rgba[..., 3] == 255)
    assert hot.size and 230 < hot[:, 0].mean() < 280 and 220 < hot[:, 1].mean() < 260  # the same place, scaled


def test_label_map_slice_has_each_segment_in_its_colour_and_transparent_background() -> None:
    labels = np.zeros((4, 6), dtype=np.uint8)
    labels[1, 1] = 1
    labels[2, 4] = 2
    rgba = overlays.labels_rgba(labels, (12, 8))
    assert rgba.shape == (8, 12, 4)
    assert rgba[0, 0, 3] == 0
    assert tuple(rgba[2, 2]) == (*overlays.segment_colour(1), 255)
    assert tuple(rgba[4, 8]) == (*overlays.segment_colour(2), 255)
    assert overlays.segment_colour(1) != overlays.segment_colour(2)
    assert overlays.segment_colour(1 + len(overlays.PALETTE)) == overlays.segment_colour(1)
    assert overlays.hex_colour((31, 119, 180)) == "#1f77b4"


def test_best_frame_is_the_most_labelled_slice_else_the_middle() -> None:
    labels = np.zeros((5, 4, 4), dtype=np.uint8)
    assert overlays.best_frame(labels) == 2
    labels[3, :2, :2] = 1
    labels[1, 0, 0] = 4
    assert overlays.best_frame(labels) == 3
    with pytest.raises(ValueError):
        overlays.best_frame(labels[0])


def test_png_keeps_the_alpha_channel() -> None:
    rgba = overlays.heatmap_rgba(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    image = Image.open(io.BytesIO(overlays.png(rgba)))
    assert image.mode == "RGBA" and image.size == (8, 8)
    assert np.array_equal(np.asarray(image), rgba)


def test_heatmap_ramp_names_the_floor_and_the_top() -> None:
    ramp = overlays.heatmap_ramp()
    assert ramp[0] == (FLOOR, "#0000ff") and ramp[-1] == (1.0, "#ff0000")
