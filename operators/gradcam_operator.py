"""GradCamOperator: a Grad-CAM heat-map for each finding the classifier called present, on the source image grid.

Grad-CAM (Selvaraju et al., ICCV 2017): the target layer's activations weighted by the spatially averaged
gradient of the finding's logit, ReLU, upsampled to the network input (``monai.visualize.GradCAM``). Here the map
is then scaled to 0..1 (high = drove the finding), cut out of the letterbox padding and resized to the source
image's rows x columns, float32, so that a viewer can lay it over the original DICOM image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import ConditionType, Operator, OperatorSpec

from operators.cxr_classifier_operator import CxrPrediction
from operators.radiograph import unletterbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainedPrediction:
    """A prediction with the heat-maps (finding name -> rows x columns float32 0..1) of its present findings."""

    prediction: CxrPrediction
    heatmaps: dict[str, np.ndarray]
    timing: dict[str, float] = field(default_factory=dict)


def scale_unit(cam: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of a batch to 0..1, high staying high; a constant map becomes all zeros.

    (MONAI's ``default_normalizer`` maps max to 0 and min to 1, the reverse of what a heat-map overlay wants.)
    """
    flat = cam.reshape(cam.shape[0], -1)
    low = flat.min(dim=1).values.view(-1, *[1] * (cam.dim() - 1))
    span = (flat.max(dim=1).values.view(-1, *[1] * (cam.dim() - 1)) - low).clamp_min(1e-12)
    return torch.where(span > 1e-12, (cam - low) / span, torch.zeros_like(cam))


def gradcam_maps(prediction: CxrPrediction, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM heat-maps on the source image grid for ``names`` (default: the findings called present)."""
    from monai.visualize import GradCAM

    model = prediction.model
    wanted = (
        names
        if names is not None
        else [f.name for f, present in zip(model.findings, prediction.present, strict=True) if present]
    )
    if not wanted:
        return {}
    index = {f.name: k for k, f in enumerate(model.findings)}
    if model.explainer is None:  # GradCAM hooks into the network once; reuse it
        model.explainer = GradCAM(nn_module=model.network, target_layers=model.target_layer, postprocessing=scale_unit)
    cam = model.explainer
    x = torch.from_numpy(prediction.image.input[None]).to(next(model.network.parameters()).device)
    maps = {}
    for name in wanted:
        grid = cam(x, class_idx=index[name])[0, 0].detach().cpu().numpy()
        maps[name] = np.clip(unletterbox(grid, prediction.image.letterbox), 0.0, 1.0)
    return maps


class GradCamOperator(Operator):
    """Explains each present finding with a Grad-CAM heat-map.

    Named input:
        prediction: a :class:`operators.cxr_classifier_operator.CxrPrediction`.

    Named output:
        explained: an :class:`ExplainedPrediction`.
    """

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("prediction").condition(ConditionType.MESSAGE_AVAILABLE)
        spec.output("explained")

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        op_output.emit(self.explain(op_input.receive("prediction")), "explained")

    def explain(self, prediction: CxrPrediction) -> ExplainedPrediction:
        started = time.perf_counter()
        maps = gradcam_maps(prediction)
        seconds = time.perf_counter() - started
        log.info("Grad-CAM for %s in %.3f s", sorted(maps) or "no finding", seconds)
        return ExplainedPrediction(prediction, maps, dict(prediction.timing, gradcam_seconds=seconds))
