"""Volume geometry for 3-D segmentation: DICOM/NIfTI affines, resampling between grids, the network's working grid.

Pure numpy/torch (no Holoscan), shared by the segmentation operator and the training script so that both
prepare a volume in exactly the same way.

Conventions:

- World coordinates are DICOM patient coordinates, **LPS** (+x toward the patient's left, +y posterior,
  +z head), DICOM PS3.3 C.7.6.2.1.1. NIfTI affines are **RAS** (+x right, +y anterior, +z superior), so
  ``lps = diag(-1, -1, 1) @ ras`` (:data:`RAS_TO_LPS`).
- An affine maps an array index ``(i0, i1, i2)`` (in array-axis order) to world millimetres.
  A DICOM series array is ``(frames, rows, columns)``; its affine (:func:`series_affine`) follows DICOM
  C.7.6.2.1.1: ``P = S_k + c * Δc * X + r * Δr * Y`` with X the row direction cosine (first three values of
  Image Orientation Patient), Y the column direction cosine, Δr the row spacing (Pixel Spacing[0]) and Δc the
  column spacing (Pixel Spacing[1]).
- The network's working grid (:class:`WorkingGrid`) is an isotropic cube whose axes run +R, +A, +S (the NIfTI
  "RAS" voxel order the atlas is stored in), centred on the foreground centroid of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryError(ValueError):
    """The slices of a series do not form a regular 3-D grid."""


@dataclass(frozen=True)
class WorkingGrid:
    """The network's input grid: ``size``³ voxels of ``spacing_mm`` along +R, +A, +S."""

    size: int
    spacing_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)

    def affine(self, center_lps: Sequence[float] | np.ndarray, size: int | None = None) -> np.ndarray:
        """LPS affine of a cube of ``size`` (default :attr:`size`) voxels centred on ``center_lps``."""
        n = self.size if size is None else size
        direction = np.diag([-self.spacing_mm, -self.spacing_mm, self.spacing_mm])  # +R, +A, +S in LPS
        aff = np.eye(4)
        aff[:3, :3] = direction
        aff[:3, 3] = np.asarray(center_lps, dtype=float) - direction @ np.full(3, (n - 1) / 2.0)
        return aff


def series_affine(
    positions: Sequence[Sequence[float]], orientation: Sequence[float], pixel_spacing: Sequence[float]
) -> np.ndarray:
    """The LPS affine of a ``(frames, rows, columns)`` array from its slices' DICOM geometry.

    ``positions`` are the Image Position Patient values of the frames in array order, ``orientation`` the
    Image Orientation Patient and ``pixel_spacing`` the Pixel Spacing (row spacing, column spacing) shared by
    all of them. The slice step is taken from the first and last positions; every position must lie on that
    line within a tenth of the step (no missing or unevenly spaced slices), else :class:`GeometryError`.
    """
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) < 2:
        raise GeometryError("a 3-D series needs at least two slices with Image Position Patient")
    iop = np.asarray(orientation, dtype=float)
    row_cos, col_cos = iop[:3], iop[3:]
    row_spacing, col_spacing = float(pixel_spacing[0]), float(pixel_spacing[1])
    step = (pos[-1] - pos[0]) / (len(pos) - 1)
    step_len = float(np.linalg.norm(step))
    if step_len == 0.0:
        raise GeometryError("all slices share one position")
    expected = pos[0] + np.outer(np.arange(len(pos)), step)
    worst = float(np.max(np.linalg.norm(pos - expected, axis=1)))
    if worst > 0.1 * step_len:
        raise GeometryError(f"slices are not evenly spaced (a slice is {worst:.2f} mm off a {step_len:.2f} mm grid)")
    aff = np.eye(4)
    aff[:3, 0] = step
    aff[:3, 1] = col_cos * row_spacing  # along a column: the next row
    aff[:3, 2] = row_cos * col_spacing  # along a row: the next column
    aff[:3, 3] = pos[0]
    return aff


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """The volume of one voxel of a grid with this affine (|det| of its 3x3 part), in mm³."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def foreground_center(volume: np.ndarray, affine: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """World (LPS) centroid of the voxels brighter than ``fraction`` of the 99th intensity percentile.

    This places the working grid on the head whatever the field of view; the training script centres its
    augmented samples the same way.
    """
    vol = np.asarray(volume, dtype=np.float32)
    threshold = fraction * float(np.percentile(vol, 99))
    mask = vol > threshold
    if not mask.any():
        raise GeometryError("the volume is empty (no voxel above the background)")
    centroid = np.asarray(ndimage.center_of_mass(mask), dtype=float)
    return (np.asarray(affine, dtype=float) @ np.append(centroid, 1.0))[:3]


def _axis_spacings(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def antialias_sigmas(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Gaussian sigmas (in source voxels, per source axis) to apply before down-sampling to ``dst``.

    Uses the usual ``(factor - 1) / 2`` rule (as scikit-image's ``resize(anti_aliasing=True)``), with the
    factor being the destination's smallest spacing over the source's spacing along each axis.
    """
    factor = float(_axis_spacings(dst_affine).min()) / _axis_spacings(src_affine)
    return np.maximum(0.0, (factor - 1.0) / 2.0)


def _sampling_grid(src_affine: np.ndarray, src_shape: Sequence[int], dst_affine: np.ndarray,
                   dst_shape: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` grid (1, d0, d1, d2, 3) locating each destination voxel in the source array."""
    m = np.linalg.inv(np.asarray(src_affine, dtype=float)) @ np.asarray(dst_affine, dtype=float)
    # Normalise source indices to [-1, 1] (align_corners=True) and reverse the axes (grid_sample wants x = last).
    scale = np.array([2.0 / max(n - 1, 1) for n in src_shape])
    m = np.diag(np.append(scale, 1.0)) @ m
    m[:3, 3] -= 1.0
    m = m[[2, 1, 0, 3]]
    axes = [torch.arange(n, dtype=torch.float64) for n in dst_shape]
    g0, g1, g2 = torch.meshgrid(*axes, indexing="ij")
    idx = torch.stack([g0, g1, g2, torch.ones_like(g0)], dim=-1)
    grid = idx @ torch.from_numpy(m[:3].T.copy())
    return grid.to(torch.float32)[None]


def resample(
    volume: np.ndarray | torch.Tensor,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resample a ``(channels, *spatial)`` volume onto another grid (world coordinates via the affines).

    ``mode`` is ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``; outside the source field of view the
    result is 0. Returns a float32 tensor ``(channels, *dst_shape)``.
    """
    src = torch.as_tensor(volume, dtype=torch.float32)
    if src.ndim != 4:
        raise ValueError("resample expects (channels, d0, d1, d2)")
    grid = _sampling_grid(src_affine, src.shape[1:], dst_affine, dst_shape)
    out = torch.nn.functional.grid_sample(src[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[0]


def resample_image(volume: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                   dst_shape: Sequence[int]) -> np.ndarray:
    """An intensity volume ``(*spatial)`` on another grid: anti-aliasing Gaussian, then trilinear."""
    vol = np.asarray(volume, dtype=np.float32)
    sigmas = antialias_sigmas(src_affine, dst_affine)
    if np.any(sigmas > 0):
        vol = ndimage.gaussian_filter(vol, sigma=sigmas, mode="nearest")
    return resample(vol[None], src_affine, dst_affine, dst_shape)[0].numpy()


def resample_labels(labels: np.ndarray, n_classes: int, src_affine: np.ndarray, dst_affine: np.ndarray,
                    dst_shape: Sequence[int]) -> np.ndarray:
    """A label map on another grid by partial volume: each class's (anti-aliased) fraction, then the argmax."""
    lab = np.asarray(labels)
    sigmas = antialias_sigmas(src_affine, dst_affine)
    best = np.zeros(tuple(dst_shape), dtype=np.float32)
    out = np.zeros(tuple(dst_shape), dtype=np.uint8)
    for c in range(n_classes):
        one = (lab == c).astype(np.float32)
        if np.any(sigmas > 0):
            one = ndimage.gaussian_filter(one, sigma=sigmas, mode="nearest")
        frac = resample(one[None], src_affine, dst_affine, dst_shape)[0].numpy()
        if c == 0:
            frac = np.maximum(frac, 1e-6)  # outside the source: background
        better = frac > best
        out[better] = c
        best[better] = frac[better]
    return out


def probabilities_to_labels(probs: torch.Tensor, src_affine: np.ndarray, dst_affine: np.ndarray,
                            dst_shape: Sequence[int], chunk: int = 16) -> np.ndarray:
    """Class probabilities ``(C, *working)`` → a uint8 label map on a destination grid, ``chunk`` frames at a time.

    The probabilities are interpolated trilinearly and the label is their argmax, which gives smoother
    boundaries than nearest-neighbour up-sampling of a label map; outside the working grid every probability
    is 0 and the label is 0 (background).
    """
    shape = tuple(int(n) for n in dst_shape)
    out = np.zeros(shape, dtype=np.uint8)
    for start in range(0, shape[0], chunk):
        stop = min(start + chunk, shape[0])
        shift = np.eye(4)
        shift[0, 3] = start
        part = resample(probs, src_affine, np.asarray(dst_affine) @ shift, (stop - start, *shape[1:]))
        out[start:stop] = torch.argmax(part, dim=0).to(torch.uint8).numpy()
    return out


def normalize_intensity(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Map the ``lower``..``upper`` intensity percentiles to 0..1 (not clipped); robust to MR's arbitrary scale."""
    vol = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(vol, [lower, upper])
    return ((vol - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)
