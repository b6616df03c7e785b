"""CxrTriageApp: a study's frontal chest radiograph (CR/DX) -> five findings, each with a Grad-CAM heat-map.

Operator graph (MONAI Deploy App SDK, as its ``ai_spleen_seg_app``)::

    DICOMDataLoaderOperator ─▶ DICOMSeriesSelectorOperator (Modality CR|DX) ─▶ CxrImageLoaderOperator
        ─▶ CxrClassifierOperator (bundle by path) ─▶ GradCamOperator ─▶ CxrResultOperator ─▶ ResultWriterOperator

Run: ``python -m apps.cxr_triage -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL_BUNDLE``; without ``-m`` the bundle
shipped next to this file (``model/``, a demonstration model trained on synthetic images) is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from holoscan.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from operators.app_manifest import app_ref, read_manifest
from operators.cxr_classifier_operator import CxrClassifierOperator
from operators.cxr_image_loader_operator import SELECTION_RULES, CxrImageLoaderOperator
from operators.cxr_result_operator import CxrResultOperator
from operators.gradcam_operator import GradCamOperator
from operators.result_writer_operator import ResultWriterOperator

APP_NAME = "cxr_triage"
APP_YAML = Path(__file__).resolve().with_name("app.yaml")
DEFAULT_MODEL = Path(__file__).resolve().with_name("model")


def manifest(path: Path = APP_YAML) -> dict[str, Any]:
    """The app's ``app.yaml``: ``application.version`` names the app's version, ``resources.cpu`` its threads."""
    return read_manifest(path.parent)


class CxrTriageApp(Application):
    """DICOM folder -> CR/DX series -> frontal image -> findings -> Grad-CAM -> result.json."""

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        app_yaml = manifest()
        model_path = Path(context.model_path) if context.model_path else DEFAULT_MODEL
        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(context.input_path), name="dicom_loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=SELECTION_RULES, all_matched=True, name="series_selector")
        image = CxrImageLoaderOperator(self, name="image_loader")
        threads = int(app_yaml.get("resources", {}).get("cpu", 1))
        classifier = CxrClassifierOperator(self, model_path=model_path, threads=threads, name="classifier")
        gradcam = GradCamOperator(self, name="gradcam")
        ref = app_ref(APP_YAML.parent)
        results = CxrResultOperator(self, app_name=ref.name, app_version=ref.version, name="results")
        writer = ResultWriterOperator(self, output_folder=Path(context.output_path), name="writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, image, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(image, classifier, {("image", "image")})
        self.add_flow(classifier, gradcam, {("prediction", "prediction")})
        self.add_flow(gradcam, results, {("explained", "explained")})
        self.add_flow(results, writer, {("result", "result")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    CxrTriageApp().run()
