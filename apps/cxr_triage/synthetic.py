"""Procedural frontal chest radiographs with drawn radiographic signs: the demonstration model's training data.

No chest X-ray data set can be had on these machines, so :func:`render_chest` draws one image from a seeded
generator. It is a cartoon of a PA chest film, in "density" units where bright means attenuating (bone, fluid,
soft tissue) and dark means air:

- anatomy: body outline with neck and shoulders, two lung fields (apices, lateral rib cage, diaphragm domes with
  sharp costophrenic angles), upper mediastinum with the aortic knob, the heart silhouette resting on the left
  hemidiaphragm, spine, clavicles, posterior ribs, vascular markings radiating from the hila; confounders in
  normal images (nipple shadows, small nodules, breast shadows);
- acquisition: size, position, aspect, inspiration, contrast, gamma, blur, detector noise and heel effect vary.

Each finding is drawn with its textbook sign (Felson, *Principles of Chest Roentgenology*):

- ``cardiomegaly``: cardiothoracic ratio (heart width / inner thoracic width) 0.54..0.66, normal hearts 0.38..0.48;
- ``effusion``: a basal opacity with a meniscus (higher laterally) that blunts the costophrenic angle, one or
  both sides;
- ``pneumothorax``: a lucent apico-lateral rim without lung markings, bounded by a thin visceral pleural line;
- ``consolidation``: a dense, ill-defined focal or lobar opacity, often with air bronchograms;
- ``edema``: bilateral perihilar haze (bat wing), indistinct vessels and Kerley B lines at the lateral bases.

Co-occurrence follows one latent "heart failure" state (edema with cardiomegaly and effusion) plus independent
pneumothorax and consolidation, see :func:`sample_labels`. A model trained here learns these synthetic signs,
not real disease.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

#: Finding names, in the order of the network's output channels.
FINDINGS: tuple[str, ...] = ("cardiomegaly", "edema", "effusion", "pneumothorax", "consolidation")

#: Cardiothoracic ratio ranges drawn for normal and enlarged hearts (a gap between them keeps labels clean).
CTR_NORMAL = (0.38, 0.48)
CTR_ENLARGED = (0.54, 0.66)


def sample_labels(rng: np.random.Generator) -> dict[str, bool]:
    """Findings of one synthetic patient: a latent heart-failure state drives edema, cardiomegaly and effusion."""
    heart_failure = rng.random() < 0.25
    if heart_failure:
        cardiomegaly, edema, effusion = rng.random() < 0.7, rng.random() < 0.7, rng.random() < 0.55
    else:
        cardiomegaly, edema, effusion = rng.random() < 0.12, rng.random() < 0.06, rng.random() < 0.12
    return {
        "cardiomegaly": bool(cardiomegaly),
        "edema": bool(edema),
        "effusion": bool(effusion),
        "pneumothorax": bool(rng.random() < 0.15),
        "consolidation": bool(rng.random() < 0.18 + 0.1 * effusion),
    }


@dataclass(frozen=True)
class _Thorax:
    """Geometry of one synthetic chest, in units of the image height; x is measured from the midline."""

    cx: float  # midline, from the image centre
    tw: float  # inner thoracic half-width at the bases
    apex: float  # lung apex level
    cp: float  # costophrenic angle level
    dome: float  # diaphragm dome height above the costophrenic level
    med: float  # upper mediastinum half-width
    hilum: float  # hilum level
    heart_left: float  # heart extent to the patient's left (image right), from the midline
    heart_right: float  # heart extent to the patient's right (image left)
    heart_top: float


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def render_chest(
    rng: np.random.Generator, labels: dict[str, bool], rows: int, cols: int, ctr: float | None = None
) -> np.ndarray:
    """One synthetic PA chest radiograph (``rows x cols`` float32, density: bright = attenuating) with ``labels``.

    ``ctr`` fixes the cardiothoracic ratio (otherwise drawn from :data:`CTR_NORMAL` / :data:`CTR_ENLARGED`).
    """
    s = float(rows)
    px = 1.0 / s  # one pixel in height units
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    y = yy / s
    x0 = (xx - cols / 2.0) / s

    tw = rng.uniform(0.33, 0.45) * min(1.0, cols / s)
    apex = rng.uniform(0.06, 0.16)
    cp = min(0.93, apex + rng.uniform(0.6, 0.72))
    if ctr is None:
        ctr = rng.uniform(*(CTR_ENLARGED if labels.get("cardiomegaly") else CTR_NORMAL))
    heart_width = 2.0 * tw * ctr
    left_share = rng.uniform(0.6, 0.7)
    g = _Thorax(
        cx=rng.normal(0.0, 0.02),
        tw=tw,
        apex=apex,
        cp=cp,
        dome=rng.uniform(0.05, 0.1),
        med=rng.uniform(0.05, 0.07) * tw / 0.4,
        hilum=apex + rng.uniform(0.25, 0.32),
        heart_left=heart_width * left_share,
        heart_right=heart_width * (1.0 - left_share),
        heart_top=cp - rng.uniform(0.26, 0.33),
    )
    x = x0 - g.cx
    ax = np.abs(x)
    right = x < 0  # the patient's right lung is on the image left (PA view)

    # -- thorax and lungs ------------------------------------------------------------------------------------
    t = np.clip((y - g.apex) / (g.cp - g.apex), 0.0, 1.0)
    lateral = g.tw * (0.74 + 0.26 * t**0.6)
    apex_curve = g.apex + 0.8 * ((ax - 0.5 * g.tw) / g.tw) ** 2
    dome_peak = 0.45 * g.tw
    lift = np.where(right, 0.02, 0.0)  # the right hemidiaphragm sits higher
    diaphragm = g.cp - lift - g.dome * np.clip(1.0 - ((ax - dome_peak) / (g.tw - dome_peak)) ** 2, 0.0, 1.0)
    knob = 0.035 * np.exp(-(((y - (g.apex + 0.17)) / 0.04) ** 2)) * (x > 0)
    mediastinum_edge = g.med + knob
    heart_cx = (g.heart_left - g.heart_right) / 2.0
    heart_a = (g.heart_left + g.heart_right) / 2.0
    heart_cy = g.cp - 0.6 * g.dome - 0.02
    heart_b = heart_cy - g.heart_top
    heart = ((x - heart_cx) / heart_a) ** 2 + ((y - heart_cy) / heart_b) ** 2 < 1.0
    thorax = (ax < lateral) & (y > apex_curve) & (y < diaphragm)
    lungs = thorax & (ax > mediastinum_edge) & ~heart
    # how far inside the lung from the rib cage / apex (height units): pneumothorax rim and Kerley lines use it
    depth = np.minimum(lateral - ax, y - apex_curve)

    # -- body, mediastinum, abdomen ---------------------------------------------------------------------------
    wall = rng.uniform(0.03, 0.08)
    neck = rng.uniform(0.1, 0.14)
    shoulder_level = g.apex - rng.uniform(0.0, 0.05)
    body_half = neck + (g.tw + wall + rng.uniform(0.04, 0.1) - neck) * _smoothstep(
        shoulder_level - 0.06, shoulder_level + 0.02, y
    )
    body = ax < body_half
    density = np.where(body, rng.uniform(0.4, 0.5), rng.uniform(0.0, 0.04)).astype(np.float32)
    below = body & (y >= diaphragm)
    density[below] = rng.uniform(0.66, 0.74)
    central = body & (ax <= mediastinum_edge) & (y > g.apex - 0.1) & (y < diaphragm)
    density[central] = rng.uniform(0.68, 0.76)
    density[heart & body & (y < diaphragm)] = rng.uniform(0.64, 0.72)
    breast = rng.uniform(0.0, 0.08)  # breast shadows: extra soft tissue over the lower, lateral zones
    density += breast * _smoothstep(g.cp - 0.35, g.cp - 0.15, y) * _smoothstep(0.3 * g.tw, 0.8 * g.tw, ax) * body

    # -- lungs: air with vascular markings --------------------------------------------------------------------
    lung_level = rng.uniform(0.12, 0.28)
    markings = _vessels(rng, x, y, g, lungs)
    if labels.get("edema"):
        markings = gaussian_filter(markings, sigma=max(1.0, 0.006 / px))  # indistinct vessels
    lung_density = lung_level + rng.uniform(0.12, 0.2) * markings

    # pneumothorax: a lucent rim without markings, bounded by the visceral pleural line
    rim = np.zeros_like(lungs)
    if labels.get("pneumothorax"):
        side = right if rng.random() < 0.5 else ~right
        gap = rng.uniform(0.035, 0.1)
        rim = lungs & side & (depth < gap)
        line = lungs & side & (np.abs(depth - gap) < max(0.6 * px, 0.0025)) & ~rim
        lung_density = np.where(rim, lung_level * rng.uniform(0.2, 0.45), lung_density)
        lung_density = np.where(line, lung_density + rng.uniform(0.12, 0.2), lung_density)
        lung_density = np.where(lungs & side & ~rim & ~line, lung_density + 0.03, lung_density)  # denser lung
    density = np.where(lungs, lung_density, density).astype(np.float32)

    # -- bones ------------------------------------------------------------------------------------------------
    dense = (below | central | heart).astype(np.float32)  # bone shows less through dense soft tissue
    density += _ribs(rng, x, y, g, lateral, body) * (1.0 - 0.7 * dense)
    density += _clavicles(rng, x, y, g)
    spine = (ax < 0.022 + 0.01 * t) & (y > g.apex - 0.15) & (y < g.cp + 0.05)
    density += spine * (rng.uniform(0.03, 0.06) + 0.03 * (np.sin(y / 0.035 * np.pi) > 0.6))

    # -- confounders in any image -----------------------------------------------------------------------------
    for _ in range(rng.poisson(0.6)):  # small nodules / nipple shadows: round, small, faint
        cxn = rng.uniform(-0.85, 0.85) * g.tw
        cyn = rng.uniform(g.hilum - 0.1, g.cp - 0.05)
        radius = rng.uniform(0.008, 0.018)
        density += rng.uniform(0.05, 0.12) * np.exp(-(((x - cxn) ** 2 + (y - cyn) ** 2) / radius**2))

    # -- findings ---------------------------------------------------------------------------------------------
    if labels.get("edema"):
        density += _edema(rng, x, y, g, lungs, lateral, px)
    if labels.get("consolidation"):
        density += _consolidation(rng, x, y, g, lungs & ~rim, right, px)
    if labels.get("effusion"):
        density = _effusion(rng, x, y, g, lungs, right, lateral, mediastinum_edge, density)

    # -- acquisition ------------------------------------------------------------------------------------------
    density = gaussian_filter(density, sigma=rng.uniform(0.4, 1.1))
    density *= 1.0 + rng.uniform(-0.08, 0.08) * (y - 0.5)  # heel effect
    density = np.clip(density, 0.0, None) ** rng.uniform(0.75, 1.35)
    density += rng.normal(0.0, rng.uniform(0.005, 0.025), density.shape)
    if rng.random() < 0.3:  # a burned-in side marker
        r0, c0 = int(rng.uniform(0.03, 0.15) * rows), int(rng.uniform(0.03, 0.9) * cols)
        density[r0 : r0 + max(2, rows // 30), c0 : c0 + max(2, cols // 25)] = density.max()
    return density.astype(np.float32)


def _segment_field(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], width: float
) -> np.ndarray:
    """A soft line from ``p0`` to ``p1`` (Gaussian profile of ``width``), evaluated only in its bounding box."""
    out = np.zeros_like(x)
    pad = 3.0 * width
    xmin, xmax = min(p0[0], p1[0]) - pad, max(p0[0], p1[0]) + pad
    ymin, ymax = min(p0[1], p1[1]) - pad, max(p0[1], p1[1]) + pad
    cols = np.nonzero((x[0] >= xmin) & (x[0] <= xmax))[0]
    rows = np.nonzero((y[:, 0] >= ymin) & (y[:, 0] <= ymax))[0]
    if cols.size == 0 or rows.size == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    bx, by = x[box], y[box]
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length2 = dx * dx + dy * dy + 1e-12
    u = np.clip(((bx - p0[0]) * dx + (by - p0[1]) * dy) / length2, 0.0, 1.0)
    d2 = (bx - p0[0] - u * dx) ** 2 + (by - p0[1] - u * dy) ** 2
    out[box] = np.exp(-d2 / (width * width)) * (1.0 - 0.6 * u)
    return out


def _tree(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    origin: tuple[float, float],
    angle: float,
    length: float,
    width: float,
    depth: int,
) -> np.ndarray:
    """A branching tree of soft lines (vessels, or bronchi for air bronchograms)."""
    end = (origin[0] + length * np.cos(angle), origin[1] + length * np.sin(angle))
    field = _segment_field(x, y, origin, end, width)
    if depth > 0:
        for turn in (-1.0, 1.0):
            sub = _tree(
                rng,
                x,
                y,
                end,
                angle + turn * rng.uniform(0.2, 0.6),
                length * rng.uniform(0.55, 0.8),
                width * 0.7,
                depth - 1,
            )
            field = np.maximum(field, 0.8 * sub)
    return field


def _vessels(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, g: _Thorax, lungs: np.ndarray) -> np.ndarray:
    """Vascular markings radiating from both hila, fading toward the periphery."""
    field = np.zeros_like(x)
    for side in (-1.0, 1.0):
        hilum = (side * (g.med + 0.04), g.hilum)
        for _ in range(rng.integers(5, 8)):
            # angles fan out laterally, up and down (image y grows downwards)
            angle = rng.uniform(-1.3, 1.3)
            angle = angle if side > 0 else np.pi - angle
            field = np.maximum(field, _tree(rng, x, y, hilum, angle, rng.uniform(0.06, 0.1), 0.006, 2))
    return field * lungs


def _ribs(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, g: _Thorax, lateral: np.ndarray, body: np.ndarray
) -> np.ndarray:
    """Posterior ribs: arcs from the spine that rise then fall laterally, brighter at their cortices."""
    out = np.zeros_like(x)
    n = 9
    spacing = (g.cp - g.apex) / (n - 0.5)
    thickness = spacing * rng.uniform(0.16, 0.24)
    u = np.abs(x) / g.tw
    level = rng.uniform(0.05, 0.1)
    inside = (np.abs(x) < lateral + 0.02) & body
    for i in range(n):
        y0 = g.apex - 0.02 + i * spacing
        centre = y0 - 0.05 * u + (0.09 + 0.01 * i) * u**2
        d = np.abs(y - centre) / thickness
        band = np.clip(1.0 - d, 0.0, 1.0)
        out += level * (band > 0) * (0.6 + 0.4 * _smoothstep(0.5, 1.0, 1.0 - band))
    return out * inside


def _clavicles(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, g: _Thorax) -> np.ndarray:
    """Two clavicles from the manubrium outward and slightly upward."""
    out = np.zeros_like(x)
    level = g.apex + rng.uniform(0.0, 0.05)
    for side in (-1.0, 1.0):
        p0 = (side * 0.03, level + 0.03)
        p1 = (side * (g.tw + 0.05), level - rng.uniform(0.0, 0.05))
        out = np.maximum(out, _segment_field(x, y, p0, p1, 0.018))
    return rng.uniform(0.08, 0.14) * (out > 0.3)


def _edema(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    g: _Thorax,
    lungs: np.ndarray,
    lateral: np.ndarray,
    px: float,
) -> np.ndarray:
    """Bilateral perihilar haze (bat wing) and Kerley B lines at the lateral lung bases."""
    amp = rng.uniform(0.14, 0.28)
    haze = np.zeros_like(x)
    for side in (-1.0, 1.0):
        hx, hy = side * (g.med + 0.05), g.hilum + 0.03
        sx, sy = rng.uniform(0.08, 0.13), rng.uniform(0.1, 0.15)
        haze += np.exp(-(((x - hx) / sx) ** 2 + ((y - hy) / sy) ** 2))
    out = amp * np.clip(haze, 0.0, 1.0)
    kerley = np.zeros_like(x)
    for side in (-1.0, 1.0):
        for _ in range(rng.integers(4, 9)):
            ly = rng.uniform(g.cp - 0.2, g.cp - 0.04)
            wall = g.tw * (0.74 + 0.26 * ((ly - g.apex) / (g.cp - g.apex)) ** 0.6)
            length = rng.uniform(0.025, 0.05)
            p0 = (side * (wall - length), ly)
            p1 = (side * wall, ly + rng.normal(0.0, 0.003))
            kerley = np.maximum(kerley, _segment_field(x, y, p0, p1, max(0.7 * px, 0.0025)))
    out += rng.uniform(0.1, 0.18) * kerley
    return out * lungs


def _consolidation(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    g: _Thorax,
    lungs: np.ndarray,
    right: np.ndarray,
    px: float,
) -> np.ndarray:
    """A dense ill-defined focal or lobar opacity, with air bronchograms in most."""
    side = -1.0 if rng.random() < 0.5 else 1.0
    cx = side * rng.uniform(0.35, 0.75) * g.tw
    cy = rng.uniform(g.apex + 0.1, g.cp - 0.08)
    field = np.zeros_like(x)
    scale = rng.uniform(0.04, 0.09)
    for _ in range(rng.integers(2, 5)):
        bx, by = cx + rng.normal(0.0, scale * 0.6), cy + rng.normal(0.0, scale * 0.6)
        sx, sy = scale * rng.uniform(0.6, 1.2), scale * rng.uniform(0.6, 1.2)
        field += np.exp(-(((x - bx) / sx) ** 2 + ((y - by) / sy) ** 2))
    blob = _smoothstep(0.3, 0.8, field)
    if side < 0 and cy < g.hilum and rng.random() < 0.5:
        blob = blob * (y < g.hilum)  # right upper lobe, bounded by the horizontal fissure
    opacity = rng.uniform(0.3, 0.45) * blob
    if rng.random() < 0.7:  # air bronchograms: dark branching tubes inside the opacity
        origin = (cx - side * scale * 0.8, cy)
        bronchi = _tree(rng, x, y, origin, 0.0 if side > 0 else np.pi, scale * 0.9, max(0.8 * px, 0.004), 2)
        opacity -= 0.6 * opacity * bronchi
    side_mask = ~right if side > 0 else right
    return opacity * (lungs & side_mask)


def _effusion(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    g: _Thorax,
    lungs: np.ndarray,
    right: np.ndarray,
    lateral: np.ndarray,
    mediastinum_edge: np.ndarray,
    density: np.ndarray,
) -> np.ndarray:
    """Basal fluid with a meniscus (higher laterally), blunting the costophrenic angle; one or both sides."""
    sides = [right, ~right] if rng.random() < 0.4 else [right if rng.random() < 0.5 else ~right]
    fluid = rng.uniform(0.6, 0.7)
    out = density.copy()
    for side in sides:
        height = rng.uniform(0.035, 0.16)
        q = np.clip((np.abs(x) - mediastinum_edge) / np.maximum(lateral - mediastinum_edge, 1e-3), 0.0, 1.0)
        top = g.cp - height * (0.35 + 0.65 * q**2)
        weight = _smoothstep(0.0, 0.025, y - top) * (lungs & side)
        out = out * (1.0 - weight) + fluid * weight
    return out


def synthetic_batch(
    rng: np.random.Generator, n: int, size: int, render_scale: tuple[float, float] = (1.0, 1.4)
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` preprocessed images (``n x 1 x size x size``) and their labels (``n x len(FINDINGS)``, 0/1).

    Images are drawn at a random size and aspect, then go through the inference preprocessing
    (:func:`operators.radiograph.preprocess`), so training sees letterboxing and windowing as inference does.
    """
    from operators.radiograph import preprocess

    images = np.empty((n, 1, size, size), np.float32)
    labels = np.empty((n, len(FINDINGS)), np.float32)
    for i in range(n):
        lab = sample_labels(rng)
        rows = int(size * rng.uniform(*render_scale))
        cols = int(rows * rng.uniform(0.85, 1.1))
        images[i], _ = preprocess(render_chest(rng, lab, rows, cols), size)
        labels[i] = [lab[f] for f in FINDINGS]
    return images, labels


def to_stored_values(density: np.ndarray, monochrome1: bool = False, bits: int = 12) -> np.ndarray:
    """Density -> unsigned detector values (``bits`` stored), inverted for MONOCHROME1 (low value = white)."""
    lo, hi = float(density.min()), float(density.max())
    scaled = (density - lo) / max(hi - lo, 1e-6)
    if monochrome1:
        scaled = 1.0 - scaled
    return np.round(scaled * (2**bits - 1)).astype(np.uint16)


def to_dicom(
    density: np.ndarray,
    path: str | Path,
    *,
    monochrome1: bool = False,
    modality: str = "CR",
    view_position: str = "PA",
    study_instance_uid: str | None = None,
) -> Path:
    """Write a synthetic radiograph as a CR (or DX) Image Storage file; returns ``path``.

    The dataset carries what a real CR header does for this pipeline: Modality, View Position, Photometric
    Interpretation (MONOCHROME1 stores inverted values), 12 bits stored, Rescale Slope/Intercept.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    sop_class_uid = {
        "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    }[modality]
    sop_class = UID(sop_class_uid)
    stored = to_stored_values(density, monochrome1=monochrome1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "Synthetic^Chest"
    ds.PatientID = "SYNTHETIC"
    ds.StudyDescription = "synthetic chest radiograph"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.PixelData = stored.tobytes()
    out = Path(path)
    ds.save_as(out, enforce_file_format=True)
    return out
