"""CxrResultOperator: an explained chest radiograph prediction -> the app's structured result (operators.app_result)."""

from __future__ import annotations

from typing import Any

import numpy as np
from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from operators.app_result import AppRef, AppResult, Coding, Finding, Inputs, ModelRef
from operators.drift_reference import image_features
from operators.gradcam_operator import ExplainedPrediction

#: Timing entries that together make ``inference_seconds``: decode, preprocessing, forward pass, Grad-CAM.
INFERENCE_STEPS = ("decode_seconds", "preprocess_seconds", "forward_seconds", "gradcam_seconds")


def heatmap_file(name: str) -> str:
    """The array file name of a finding's heat-map in the output folder."""
    return f"heatmap_{name}.npy"


def build_result(explained: ExplainedPrediction, app_name: str, app_version: str) -> tuple[AppResult, dict[str, Any]]:
    """The :class:`AppResult` (findings with codes, probabilities, thresholds, heat-maps) and its arrays."""
    prediction = explained.prediction
    image = prediction.image
    model = prediction.model
    findings, arrays = [], {}
    for spec, probability in zip(model.findings, prediction.probabilities, strict=True):
        heatmap = explained.heatmaps.get(spec.name)
        file = heatmap_file(spec.name) if heatmap is not None else None
        if heatmap is not None and file is not None:
            arrays[file] = heatmap.astype(np.float32, copy=False)
        findings.append(
            Finding(
                name=spec.name,
                code=Coding(**spec.code),
                probability=float(probability),
                threshold=spec.threshold,
                present=bool(probability >= spec.threshold),
                heatmap=file,
                sop_instance_uid=image.sop_instance_uid,
            )
        )
    positive = [f.code.display.lower() for f in findings if f.present]
    source = " ".join(v for v in (image.modality, image.view_position) if v) or "radiograph"
    verdict = f"suggests {', '.join(positive)}" if positive else f"none of {len(findings)} findings above threshold"
    summary = f"{source}: {verdict}"
    timing = dict(explained.timing)
    timing["inference_seconds"] = sum(timing.get(k, 0.0) for k in INFERENCE_STEPS)
    info = model.info
    result = AppResult(
        app=AppRef(name=app_name, version=app_version),
        model=ModelRef(**info.as_dict()),
        notice=info.notice,
        inputs=Inputs(
            study_instance_uid=image.study_instance_uid,
            series_instance_uid=image.series_instance_uid,
            sop_instance_uids=[image.sop_instance_uid] if image.sop_instance_uid else [],
            patient_id=image.patient_id,
        ),
        findings=findings,
        summary=summary + (f" ({info.notice})" if info.notice else ""),
        timing={k: round(v, 4) for k, v in timing.items()},
        monitoring=image_features(image.input),
    )
    return result, arrays


class CxrResultOperator(Operator):
    """Turns the explained prediction into ``(AppResult, arrays)`` for ResultWriterOperator.

    Named input:
        explained: an :class:`operators.gradcam_operator.ExplainedPrediction`.

    Named output:
        result: ``(AppResult, {array file: ndarray})``.
    """

    def __init__(self, fragment: Fragment, *args: Any, app_name: str, app_version: str, **kwargs: Any) -> None:
        self.app_name = app_name
        self.app_version = app_version
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("explained").condition(ConditionType.MESSAGE_AVAILABLE)
        spec.output("result")

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        op_output.emit(build_result(op_input.receive("explained"), self.app_name, self.app_version), "result")
