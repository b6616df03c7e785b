"""A finding's heat-map as an image any DICOM viewer shows: a Secondary Capture (PS3.3 A.8.1) of the source
radiograph in grey with the heat-map blended on top in colour, built with highdicom's ``SCImage``.

Why Secondary Capture and not a Parametric Map (PS3.3 A.75):

- *Who shows it.* Every PACS viewer, OHIF, a web "rendered" endpoint, a print, shows an 8-bit RGB single-frame
  SC: it is the object IHE AIR's displays are expected to handle at the least. A Parametric Map needs a viewer
  that reads the Multi-frame Functional Groups, applies its Real World Value Mapping and a colour LUT, and
  registers it on the source. OHIF (3.9 and later) has such a loader, but it overlays a map on a *volume* in a
  frame of reference; a projection radiograph has neither, and most vendors' PACS viewers show no Parametric
  Map at all. The physician would see nothing.
- *What the values mean.* The heat-map (a class-activation map scaled to 0..1 per image) is an explanation
  to look at, not a quantity with units to measure; nothing is lost that a reader needs. The exact array stays
  with the job (``/api/jobs/{id}/arrays/{name}``, ``.npy``) for anyone who wants the numbers, and the
  probability is in the TID 1500 SR.
- *Size.* The map is float32 at the source's matrix: 1955 x 1841 x 4 bytes = 14.4 MB as a Parametric Map
  (floating point pixel data has no standard compressed transfer syntax but Deflate); uncompressed RGB is
  10.8 MB; the JPEG baseline SC of RG1_UNCI is about 0.7 MB (15:1).

The picture, at the source's own rows x columns (no resampling: a pixel of the capture lies on the same pixel of
the radiograph):

- grey: the source's stored values through its Modality LUT and, where it has one, its VOI LUT Sequence, then
  the same percentile window (0.5 %..99.5 %) the model's input went through (``operators.radiograph``), and
  inverted for MONOCHROME1 / Presentation LUT Shape INVERSE (PS3.3 C.7.6.3.1.2, C.11.6). A linear Window
  Center/Width in the header is *not* used, as in the model's pipeline: it is a vendor's display hint that only
  clips (RG1_UNCI's, 15000/30000, spans the whole range and shows a flat image). The heat-map explains the
  image the network saw, so the capture shows that image;
- colour: where the heat-map (0..1, the AppResult contract) exceeds :data:`FLOOR`, a jet-like colour ramp
  (blue, cyan, green, yellow, red) blended with an opacity that grows with the value up to :data:`MAX_ALPHA`;
  below it the grey image is untouched;
- a caption burned in at the top left: the finding, its probability, the model and, for a demonstration model,
  "DEMO - not for clinical use", so the notice travels with the pixels into screenshots and viewers that show
  no descriptions (DESIGN promise 5).

Attributes: same patient and study as the source, its own series; ImageType DERIVED\\SECONDARY; Source Image
Sequence referencing the radiograph (DCM 121322 "Source image for image processing operation"); Derivation
Description and Image Comments saying "AI heat-map of <finding> (p=0.83), <model> <version>, demonstration
model, not for clinical use"; Burned In Annotation YES only when the source's is (PS3.3 C.7.6.1.1.3: it is
about text identifying the patient and the date, which the caption has none of); JPEG baseline (PS3.5 A.4.1,
YBR_FULL_422 as highdicom encodes it) with Lossy Image Compression "01", its ratio and method ISO_10918_1
appended to the source's own where the source was lossy already (PS3.3 C.7.6.1.1.5).

Pure: the source data set and the arrays in, a data set out; sending it is the write-back's job.
"""

from __future__ import annotations

import datetime

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.sr.codedict import codes
from pydicom.uid import JPEGBaseline8Bit
from pydicom.valuerep import DSfloat

from interop.writeback.sr import MANUFACTURER, series_description
from operators.app_result import AppResult, Finding

#: Percentiles of the grey window (the model's input window, ``operators.radiograph.WINDOW_PERCENTILES``).
WINDOW_PERCENTILES = (0.5, 99.5)
#: Heat below this value is not drawn; the grey image shows through.
FLOOR = 0.2
#: Opacity of the colour where the heat-map is 1.
MAX_ALPHA = 0.6
#: Jet-like colour ramp: (position 0..1 above the floor, RGB).
RAMP = ((0.0, (0, 0, 255)), (0.25, (0, 255, 255)), (0.5, (0, 255, 0)), (0.75, (255, 255, 0)), (1.0, (255, 0, 0)))
#: PS3.3 C.7.6.1.1.5: the method of JPEG baseline (ISO/IEC 10918-1).
JPEG_METHOD = "ISO_10918_1"


def heatmap_capture(result: AppResult, finding: Finding, heatmap: np.ndarray, source: Dataset, *,
                    series_instance_uid: str, sop_instance_uid: str, instance_number: int,
                    series_number: int = 9902) -> hd.sc.SCImage:
    """The Secondary Capture of ``finding``'s ``heatmap`` (rows x columns of ``source``, values 0..1) over
    ``source`` (the full source image data set, with its pixels)."""
    if finding.sop_instance_uid and finding.sop_instance_uid != source.SOPInstanceUID:
        raise ValueError(f"finding {finding.name} refers to image {finding.sop_instance_uid}, "
                         f"not to the source given ({source.SOPInstanceUID})")
    rows, cols = int(source.Rows), int(source.Columns)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (rows, cols):
        raise ValueError(f"the heat-map is {heat.shape}, the source image {rows}x{cols}")
    if not np.all(np.isfinite(heat)):
        raise ValueError("the heat-map has values that are not finite")
    rgb = blend(display_grey(source), heat)
    burn_caption(rgb, caption_lines(result, finding))
    text = description(result, finding)
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        source, pixel_array=rgb, photometric_interpretation=hd.PhotometricInterpretationValues.YBR_FULL_422,
        bits_allocated=8, coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=instance_number, manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),
        pixel_spacing=_pixel_spacing(source),  # type: ignore[arg-type]  # highdicom annotates tuple[int, int]
        laterality=source.Laterality if source.get("Laterality") in ("L", "R") else None,
        transfer_syntax_uid=JPEGBaseline8Bit,
        series_description=series_description(result, head="AI heat-maps"),
        manufacturer_model_name=f"{result.app.name} {result.app.version}"[:64],
        software_versions=f"{result.model.name} {result.model.version}"[:64],
        content_date=datetime.date.today(), content_time=datetime.datetime.now().time(),
    )
    if orientation is None:  # highdicom wants a value; the source had none (or one it can't parse): keep that
        sc.PatientOrientation = source.get("PatientOrientation", "")
    # What highdicom's SCImage has no parameter for (PS3.3 C.7.6.1, C.8.6.1, C.12.4):
    sc.ConversionType = "WSD"  # rendered by software ("workstation"), not captured from a digital interface
    sc.BurnedInAnnotation = "YES" if str(source.get("BurnedInAnnotation", "")).upper() == "YES" else "NO"
    if "RecognizableVisualFeatures" in source:
        sc.RecognizableVisualFeatures = source.RecognizableVisualFeatures
    for keyword in ("BodyPartExamined", "Laterality", "ImageLaterality"):  # as the source says, empty included
        if keyword in source and keyword not in sc:
            setattr(sc, keyword, source[keyword].value)
    sc.ImageComments = text
    sc.DerivationDescription = (f"{text}. Source windowed to its {WINDOW_PERCENTILES[0]}-{WINDOW_PERCENTILES[1]} "
                                "percentiles, heat-map blended in colour, JPEG baseline (lossy)")[:1024]
    sc.DerivationCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.LossyCompression)]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    sc.SourceImageSequence = [reference]
    _mark_lossy(sc, source)
    return sc


def display_grey(source: Dataset) -> np.ndarray:
    """The source radiograph as displayed grey levels 0..1 (1 = white), float32: see the module docstring."""
    photometric = str(source.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise ValueError(f"not a single-frame grayscale image (Photometric Interpretation {photometric or 'absent'})")
    try:
        values = np.asarray(apply_modality_lut(source.pixel_array, source), dtype=np.float32)
    except Exception as exc:  # pydicom raises several types for missing or undecodable pixel data
        raise ValueError(f"cannot decode the pixel data of {source.get('SOPInstanceUID')}: {exc}") from None
    if "VOILUTSequence" in source:
        values = np.asarray(apply_voi(values, source), dtype=np.float32)
    lo, hi = np.percentile(values, WINDOW_PERCENTILES)
    if not hi > lo:
        raise ValueError("the source image has no contrast (constant pixel values)")
    grey = np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1" or str(source.get("PresentationLUTShape", "")).upper() == "INVERSE":
        grey = 1.0 - grey
    return grey.astype(np.float32, copy=False)


def blend(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``grey`` (0..1) as RGB with ``heat`` (0..1) over it in colour where it exceeds :data:`FLOOR`; uint8.

    In float32, one colour channel at a time, into the uint8 output: a radiograph is millions of pixels, and
    the whole-image float64 RGB intermediates took ~330 MB at once (the node's resident memory then swung by
    that much with each result); this peaks near 100 MB."""
    heat = np.asarray(heat, dtype=np.float32)
    t = np.clip((heat - FLOOR) / (1.0 - FLOOR), 0.0, 1.0).astype(np.float32, copy=False)
    alpha = t * np.float32(MAX_ALPHA)
    alpha[heat <= FLOOR] = 0.0
    keep = np.float32(1.0) - alpha
    base = np.asarray(grey, dtype=np.float32) * np.float32(255.0)
    base *= keep
    positions = np.array([p for p, _ in RAMP], dtype=np.float32)
    out = np.empty((*grey.shape, 3), dtype=np.uint8)
    for i in range(3):
        channel = np.interp(t, positions, [c[i] for _, c in RAMP]).astype(np.float32)
        channel *= alpha
        channel += base
        np.rint(channel, out=channel)
        np.clip(channel, 0, 255, out=channel)
        out[..., i] = channel
    return out


def caption_lines(result: AppResult, finding: Finding) -> list[str]:
    model = f"{result.model.name} {result.model.version}"
    notice = "DEMO - not for clinical use" if result.model.demonstration else "AI output - verify"
    return [f"AI heat-map: {finding.code.display} p={finding.probability:.2f}", f"{model}  {notice}"]


def burn_caption(rgb: np.ndarray, lines: list[str]) -> None:
    """Write ``lines`` in white on a dark box into the top left corner of ``rgb`` (in place)."""
    rows, cols = rgb.shape[:2]
    size = max(10, min(rows, cols) // 60)
    font = ImageFont.load_default(size=size)
    margin = size // 2
    widths = [font.getbbox(line)[2] for line in lines]
    box_w = min(cols, max(widths) + 2 * margin)
    box_h = min(rows, len(lines) * (size + margin) + margin)
    patch = Image.fromarray(rgb[:box_h, :box_w])
    draw = ImageDraw.Draw(patch)
    draw.rectangle((0, 0, box_w, box_h), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * (size + margin)), line, fill=(255, 255, 255), font=font)
    rgb[:box_h, :box_w] = np.asarray(patch)


def description(result: AppResult, finding: Finding) -> str:
    """"AI heat-map of <finding> (p=0.83), <model> <version>[, demonstration model, not for clinical use]"."""
    text = f"AI heat-map of {finding.code.display} (p={finding.probability:.2f}), " \
           f"{result.model.name} {result.model.version}"
    if result.model.demonstration:
        text += ", demonstration model, not for clinical use"
    return text


def _orientation(source: Dataset) -> tuple[str, str] | None:
    values = [str(v) for v in (source.get("PatientOrientation") or [])]
    allowed = {v.value for v in hd.PatientOrientationValuesBiped}
    if len(values) == 2 and all(v in allowed for v in values):
        return values[0], values[1]
    return None


def _pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    spacing = [float(v) for v in (source.get("PixelSpacing") or [])]
    return (spacing[0], spacing[1]) if len(spacing) == 2 and min(spacing) > 0 else None


def _mark_lossy(sc: Dataset, source: Dataset) -> None:
    """Lossy Image Compression, Ratio and Method (PS3.3 C.7.6.1.1.5), after the source's own lossy steps."""
    [frame] = list(generate_frames(sc.PixelData, number_of_frames=1))
    ratio = DSfloat(f"{sc.Rows * sc.Columns * sc.SamplesPerPixel / len(frame):.1f}")
    ratios: list[DSfloat] = []
    methods: list[str] = []
    if str(source.get("LossyImageCompression", "")) == "01":
        old_ratios = _values(source, "LossyImageCompressionRatio")
        old_methods = _values(source, "LossyImageCompressionMethod")
        if old_ratios and len(old_ratios) == len(old_methods):  # else the order of the steps is unknown
            ratios, methods = [DSfloat(r) for r in old_ratios], old_methods
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionRatio = [*ratios, ratio]
    sc.LossyImageCompressionMethod = [*methods, JPEG_METHOD]


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
