"""MRSegmentationApp: a study's 3-D T1 MR series → eleven brain structures (label map) and their volumes in mL.

Operator graph (MONAI Deploy App SDK, as the SDK's ``ai_spleen_seg_app``)::

    DICOMDataLoaderOperator ─▶ VolumeSeriesSelectorOperator ─┬─▶ DICOMSeriesToVolumeOperator ─▶ SegmentationOperator
                                                             └──────────────────────────────────▶ (selected series)
    SegmentationOperator ─▶ StructureVolumesOperator ─▶ ResultWriterOperator

Run: ``python -m apps.mr_segmentation -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL_BUNDLE``; without ``-m`` the
bundle shipped next to this file (``model/``) is used. The model is a demonstration model (one atlas subject).
"""

from __future__ import annotations

import logging
from pathlib import Path

from holoscan.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from apps.mr_segmentation import __version__
from operators.app_manifest import app_ref
from operators.result_writer_operator import ResultWriterOperator
from operators.segmentation_operator import SegmentationOperator
from operators.structure_volumes_operator import StructureVolumesOperator
from operators.volume_series_selector_operator import VolumeSeriesSelectorOperator

APP_NAME = "mr_segmentation"
DEFAULT_MODEL = Path(__file__).resolve().parent / "model"

log = logging.getLogger(__name__)


class MRSegmentationApp(Application):
    """Segments brain structures on the largest 3-D MR series of a study and measures their volumes."""

    name = APP_NAME
    description = "Brain structures and their volumes on a 3-D T1 MR series (demonstration model)"
    version = __version__

    def compose(self) -> None:
        ctx = Application.init_app_context(self.argv)
        model_path = Path(ctx.args["model"]) if ctx.args.get("model") else DEFAULT_MODEL
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(ctx.input_path),
                                         name="dicom_loader")
        selector = VolumeSeriesSelectorOperator(self, modalities=("MR",), name="series_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
        segment = SegmentationOperator(self, model_path=model_path, name="segmentation")
        ref = app_ref(Path(__file__).resolve().parent)
        volumes = StructureVolumesOperator(self, app_name=ref.name, app_version=ref.version, name="structure_volumes")
        writer = ResultWriterOperator(self, output_folder=Path(ctx.output_path), name="result_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(selector, segment, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, segment, {("image", "image")})
        self.add_flow(segment, volumes, {("segmentation", "segmentation")})
        self.add_flow(volumes, writer, {("result", "result")})
