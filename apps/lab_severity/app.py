"""LabSeverityApp: labs.json (FHIR R4 Bundle) -> PBC histologic stage with contributions -> result.json.

``python -m apps.lab_severity -i INPUT -o OUTPUT -m MODEL`` (MONAI Deploy App SDK convention): INPUT holds
``labs.json``; MODEL is a bundle directory (default ``apps/lab_severity/model``, a demonstration model).
"""

from __future__ import annotations

import logging
from pathlib import Path

from holoscan.conditions import CountCondition
from monai.deploy.core import Application

from operators.app_manifest import app_ref
from operators.fhir_labs_loader_operator import FhirLabsLoaderOperator
from operators.result_writer_operator import ResultWriterOperator
from operators.severity_classifier_operator import SeverityClassifierOperator

APP_YAML = Path(__file__).with_name("app.yaml")


class LabSeverityApp(Application):
    """Loader (labs.json -> features) -> classifier (bundle by path) -> result writer."""

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        model_path = Path(context.model_path or Path(__file__).with_name("model"))
        loader = FhirLabsLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(context.input_path), model_path=model_path, name="loader"
        )
        classifier = SeverityClassifierOperator(self, model_path=model_path, app=app_ref(APP_YAML.parent),
                                                name="classifier")
        writer = ResultWriterOperator(self, output_folder=Path(context.output_path), name="writer")
        self.add_flow(loader, classifier, {("features", "features")})
        self.add_flow(classifier, writer, {("result", "result")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    LabSeverityApp().run()
