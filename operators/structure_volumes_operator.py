"""StructureVolumesOperator: a label map → each structure's volume in mL, packed with the label map as the AppResult.

Volume = number of voxels of the structure × the volume of one voxel of the source grid (|det| of the series
affine: pixel spacing × spacing between slices, taken from Image Position Patient rather than Slice
Thickness, which need not equal the spacing), in mm³ / 1000 = mL (UCUM ``mL``). Coded as SNOMED CT
118565006 "Volume" with the structure as finding site, the way DICOM TID 1411 volumetric measurements are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.app_result import (
    AppRef,
    AppResult,
    Coding,
    Inputs,
    Measurement,
    ModelRef,
    Segment,
    Segmentation,
)
from operators.segmentation_operator import SegmentationOutput
from operators.volume_geometry import voxel_volume_mm3

VOLUME = Coding(system="http://snomed.info/sct", code="118565006", display="Volume")
LABEL_FILE = "segmentation.npy"


def structure_volumes_ml(labels: np.ndarray, affine: np.ndarray, numbers: Sequence[int]) -> dict[int, float]:
    """Volume in mL of each label number in ``labels`` on the grid of ``affine`` (0 for an absent label)."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=256)
    per_voxel_ml = voxel_volume_mm3(affine) / 1000.0
    return {int(n): float(counts[int(n)]) * per_voxel_ml for n in numbers}


def build_result(seg: SegmentationOutput, app_name: str, app_version: str) -> tuple[AppResult, dict[str, np.ndarray]]:
    """The AppResult (segmentation + one volume measurement per structure) and its arrays."""
    src = seg.source
    segments = [Segment(number=int(s["number"]), name=str(s["name"]), code=Coding(**s["code"]),
                        laterality=Coding(**s["laterality"]) if s.get("laterality") else None)
                for s in seg.segments]
    volumes = structure_volumes_ml(seg.labels, src.affine, [s.number for s in segments])
    measurements = [
        Measurement(name=f"{s.name} volume", code=VOLUME, value=round(volumes[s.number], 2), unit="mL",
                    finding_site=s.code, laterality=s.laterality, segment_number=s.number)
        for s in segments
    ]
    found = [f"{s.name} {volumes[s.number]:.1f} mL" for s in segments]
    summary = (f"{len(segments)} brain structures on {src.modality or 'the'} series "
               f"'{src.series_description or src.series_instance_uid}' ({len(src.sop_instance_uids)} slices): "
               + ", ".join(found))
    model = ModelRef(**seg.model.as_dict())
    result = AppResult(
        app=AppRef(name=app_name, version=app_version),
        model=model,
        notice=seg.model.notice,
        inputs=Inputs(study_instance_uid=src.study_instance_uid, series_instance_uid=src.series_instance_uid,
                      sop_instance_uids=list(src.sop_instance_uids), patient_id=src.patient_id),
        measurements=measurements,
        segmentations=[Segmentation(file=LABEL_FILE, segments=segments, series_instance_uid=src.series_instance_uid,
                                    referenced_sop_instance_uids=list(src.sop_instance_uids))],
        summary=summary,
        timing=dict(seg.timing),
        monitoring=dict(seg.monitoring),
    )
    return result, {LABEL_FILE: np.ascontiguousarray(seg.labels, dtype=np.uint8)}


class StructureVolumesOperator(Operator):
    """Measures each segmented structure's volume and emits the app's result.

    Named input:
        segmentation: a :class:`~operators.segmentation_operator.SegmentationOutput`.
    Named output:
        result: ``(AppResult, {"segmentation.npy": label map})`` for ResultWriterOperator.
    """

    def __init__(self, fragment: Fragment, *args: Any, app_name: str, app_version: str, **kwargs: Any) -> None:
        self.app_name = app_name
        self.app_version = app_version
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("segmentation")
        spec.output("result")

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        seg = op_input.receive("segmentation")
        op_output.emit(build_result(seg, self.app_name, self.app_version), "result")
