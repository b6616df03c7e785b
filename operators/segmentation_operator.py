"""SegmentationOperator: a 3-D series → a label map of named structures on that series' own grid.

The operator receives the volume built by the SDK's ``DICOMSeriesToVolumeOperator`` (``(frames, rows, columns)``,
frames sorted along the slice normal) and the selected series, and uses :class:`VolumeSegmenter`, which

1. takes the series' geometry from its slices (Image Position/Orientation Patient, Pixel Spacing:
   :func:`~operators.volume_geometry.series_affine`; the SDK's own affine swaps the two in-plane spacings
   and assumes square pixels, so it is not used),
2. resamples the volume onto the model's working grid (an isotropic cube along +R/+A/+S centred on the head,
   anti-aliased trilinear), normalises the intensities as the model was trained (percentiles to 0..1),
3. runs the TorchScript network of the model bundle (whole grid in one pass: no sliding window is needed
   because the grid covers the head),
4. interpolates the class probabilities back onto the source grid and takes their argmax, so that frame *i*
   of the label map lies on the *i*-th slice (SOP instance) of the series.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from operators.drift_reference import image_features
from operators.model_bundle import ModelBundleError, ModelInfo, model_file, model_info
from operators.volume_geometry import (
    WorkingGrid,
    foreground_center,
    normalize_intensity,
    probabilities_to_labels,
    resample_image,
    series_affine,
)

log = logging.getLogger(__name__)


@dataclass
class SourceVolume:
    """A selected 3-D series: voxels ``(frames, rows, columns)``, its LPS affine and identity."""

    voxels: np.ndarray
    affine: np.ndarray
    sop_instance_uids: list[str]
    series_instance_uid: str
    study_instance_uid: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    series_description: str | None = None


@dataclass
class SegmentationOutput:
    """What :class:`SegmentationOperator` emits: the label map on the source grid and where it came from."""

    labels: np.ndarray  # uint8, (frames, rows, columns) of the source series
    source: SourceVolume
    segments: list[dict[str, Any]]  # from the bundle metadata: number, name, code, laterality
    model: ModelInfo
    timing: dict[str, float] = field(default_factory=dict)
    #: Features of the network's input (operators.drift_reference.image_features), for drift monitoring.
    monitoring: dict[str, float] = field(default_factory=dict)


def source_volume(voxels: np.ndarray, sop_instances: list[Any]) -> SourceVolume:
    """A :class:`SourceVolume` from the SDK volume and the series' SOP instances in the same (sorted) order."""
    datasets = [s.get_native_sop_instance() for s in sop_instances]
    if voxels.ndim != 3 or voxels.shape[0] != len(datasets):
        raise ValueError(f"volume of shape {voxels.shape} does not match the {len(datasets)} slices of the series")
    first = datasets[0]
    affine = series_affine([d.ImagePositionPatient for d in datasets], first.ImageOrientationPatient,
                           first.PixelSpacing)
    if np.dot(affine[:3, 0], np.cross(affine[:3, 2], affine[:3, 1])) <= 0:
        raise ValueError("slices are not ordered along the slice normal")
    return SourceVolume(
        voxels=np.asarray(voxels),
        affine=affine,
        sop_instance_uids=[str(d.SOPInstanceUID) for d in datasets],
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(first.get("StudyInstanceUID", "")) or None,
        patient_id=str(first.get("PatientID", "")) or None,
        modality=str(first.get("Modality", "")) or None,
        series_description=str(first.get("SeriesDescription", "")) or None,
    )


class VolumeSegmenter:
    """A segmentation model bundle (TorchScript ``models/model.ts`` + ``configs/metadata.json``) applied to volumes."""

    def __init__(self, bundle: str | Path) -> None:
        bundle = Path(bundle)
        if not bundle.is_dir():
            raise ModelBundleError(f"model bundle not found at {bundle}")
        weights = model_file(bundle, "model.ts")
        self.info = model_info(bundle, weights)
        meta = self.info.metadata
        try:
            grid = meta["working_grid"]
            self.grid = WorkingGrid(int(grid["size"]), float(grid["spacing_mm"]))
            self.foreground_fraction = float(grid.get("foreground_fraction", 0.2))
            norm = meta["intensity_normalization"]
            self.percentiles = (float(norm["lower_percentile"]), float(norm["upper_percentile"]))
            self.segments: list[dict[str, Any]] = list(meta["segments"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelBundleError(f"{bundle}/configs/metadata.json lacks segmentation settings: {exc}") from None
        self.modalities = [str(m).upper() for m in meta.get("input_modalities", ["MR"])]
        try:
            self.network = torch.jit.load(str(weights), map_location="cpu").eval()
        except Exception as exc:  # TorchScript raises RuntimeError and others on a bad file
            raise ModelBundleError(f"cannot load TorchScript model {weights}: {exc}") from None

    def segment(self, source: SourceVolume) -> SegmentationOutput:
        """Label map of the bundle's structures on the grid of ``source``."""
        if source.modality and self.modalities and source.modality.upper() not in self.modalities:
            raise ValueError(f"model expects {'/'.join(self.modalities)}, series is {source.modality}")
        started = time.perf_counter()
        voxels = source.voxels.astype(np.float32)
        center = foreground_center(voxels, source.affine, self.foreground_fraction)
        work_affine = self.grid.affine(center)
        image = resample_image(voxels, source.affine, work_affine, self.grid.shape)
        image = normalize_intensity(image, *self.percentiles)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = self.network(torch.from_numpy(image)[None, None])
        inference = time.perf_counter() - t0
        probs = torch.softmax(logits[0], dim=0)
        labels = probabilities_to_labels(probs, work_affine, source.affine, source.voxels.shape)
        timing = {"inference_seconds": round(inference, 3),
                  "segmentation_seconds": round(time.perf_counter() - started, 3)}
        log.info("segmented %s: network %.2f s, with resampling %.2f s", source.series_instance_uid, inference,
                 timing["segmentation_seconds"])
        return SegmentationOutput(labels=labels, source=source, segments=self.segments, model=self.info,
                                  timing=timing, monitoring=image_features(image))


class SegmentationOperator(Operator):
    """Segments the selected 3-D series with the model bundle at ``model_path``.

    Named inputs:
        image: the SDK ``Image`` from DICOMSeriesToVolumeOperator (voxels ``(frames, rows, columns)``).
        study_selected_series_list: the selection it was built from (for the slices' geometry and UIDs).
    Named output:
        segmentation: a :class:`SegmentationOutput`.
    """

    def __init__(self, fragment: Fragment, *args: Any, model_path: Path, **kwargs: Any) -> None:
        self.model_path = Path(model_path)
        self._segmenter: VolumeSegmenter | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image")
        spec.input("study_selected_series_list")
        spec.output("segmentation").condition(ConditionType.NONE)

    @property
    def segmenter(self) -> VolumeSegmenter:
        if self._segmenter is None:
            self._segmenter = VolumeSegmenter(self.model_path)
        return self._segmenter

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        image = op_input.receive("image")
        selected = op_input.receive("study_selected_series_list")
        series = selected[0].selected_series[0].series
        source = source_volume(np.asarray(image.asnumpy()), series.get_sop_instances())
        op_output.emit(self.segmenter.segment(source), "segmentation")
