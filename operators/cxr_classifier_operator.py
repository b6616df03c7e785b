"""CxrClassifierOperator: a chest radiograph -> probability and present/absent decision for each finding.

The model is a MONAI Bundle loaded by path (operators.model_bundle, operators.bundle_network):

- ``configs/inference.json``: ``network_def`` (any 2-D network with one input channel and one logit per finding),
  ``image_size`` (the square input side), ``gradcam_target_layer`` (the layer Grad-CAM explains);
- ``configs/metadata.json``: ``findings``, in output-channel order: ``name``, ``code`` (a Coding) and the decision
  ``threshold`` chosen on validation data; ``preprocessing.window_percentiles``;
- ``models/model.pt``: the network's state_dict.

A site's own bundle with the same keys replaces the demonstration model without a code change.
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

from operators.bundle_network import WEIGHTS, load_network, read_config
from operators.model_bundle import ModelBundleError, ModelInfo, model_file, model_info, read_metadata
from operators.radiograph import WINDOW_PERCENTILES, Radiograph, SourceImage, radiograph_from_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FindingSpec:
    """One output channel of the model: what it means and where it is called present."""

    name: str
    code: dict[str, str]  # system, code, display
    threshold: float


@dataclass
class CxrModel:
    """A loaded chest radiograph classifier: network, identity, findings, input size, Grad-CAM layer."""

    network: torch.nn.Module
    info: ModelInfo
    findings: list[FindingSpec]
    size: int
    target_layer: str
    percentiles: tuple[float, float] = WINDOW_PERCENTILES
    explainer: Any = field(default=None, repr=False)  # the Grad-CAM object, made once by operators.gradcam_operator

    @classmethod
    def load(cls, bundle: str | Path, device: str | None = None) -> CxrModel:
        """Load the bundle at ``bundle`` onto ``device`` (default: CUDA when there is one, else the CPU).

        :class:`ModelBundleError` says what is missing or inconsistent.
        """
        bundle = Path(bundle)
        if not bundle.is_dir():
            raise ModelBundleError(f"model bundle not found at {bundle}")
        read_metadata(bundle)  # "no model bundle at ..." before anything else
        weights = model_file(bundle, WEIGHTS)
        info = model_info(bundle, weights)
        findings = [_finding(item, bundle) for item in info.metadata.get("findings") or []]
        if not findings:
            raise ModelBundleError(f"{bundle / 'configs' / 'metadata.json'} lists no 'findings'")
        config = read_config(bundle)
        size = int(config.get("image_size", 224))
        target_layer = str(config.get("gradcam_target_layer", "class_layers.relu"))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        network = load_network(bundle, weights).to(device)
        with torch.no_grad():  # checks the outputs, and warms the kernels up
            out = network(torch.zeros(1, 1, size, size, device=device))
        if tuple(out.shape) != (1, len(findings)):
            raise ModelBundleError(f"network gives {tuple(out.shape)} outputs for {len(findings)} findings")
        if target_layer not in dict(network.named_modules()):
            raise ModelBundleError(f"gradcam_target_layer {target_layer!r} is not a layer of the network")
        pre = info.metadata.get("preprocessing") or {}
        low, high = pre.get("window_percentiles", WINDOW_PERCENTILES)
        return cls(network, info, findings, size, target_layer, (float(low), float(high)))

    def preprocess(self, source: SourceImage) -> Radiograph:
        """The source image as this model's input (operators.radiograph pipeline at :attr:`size`)."""
        return radiograph_from_dataset(source.dataset, self.size, source.pixels, self.percentiles)

    def probabilities(self, image: Radiograph) -> np.ndarray:
        """Probability of each finding for one preprocessed radiograph."""
        return sigmoid_probabilities(self.network, image.input[None])[0]


def sigmoid_probabilities(network: torch.nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Per-finding (multi-label, sigmoid) probabilities of ``network`` for ``images`` (n x 1 x h x w), float64."""
    network.eval()
    device = next(network.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).to(device)
            out.append(torch.sigmoid(network(x)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


@dataclass(frozen=True)
class CxrPrediction:
    """The model's reading of one radiograph."""

    image: Radiograph
    model: CxrModel
    probabilities: np.ndarray
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def present(self) -> list[bool]:
        return [bool(p >= f.threshold) for p, f in zip(self.probabilities, self.model.findings, strict=True)]


class CxrClassifierOperator(Operator):
    """Loads the model bundle (once, on first use) and classifies the radiograph it receives.

    Named input:
        image: a :class:`operators.radiograph.SourceImage` from CxrImageLoaderOperator.

    Named output:
        prediction: a :class:`CxrPrediction`.
    """

    def __init__(
        self, fragment: Fragment, *args: Any, model_path: str | Path, threads: int | None = None, **kwargs: Any
    ) -> None:
        """``threads``: CPU threads for torch (the app's ``resources.cpu``); None leaves torch's default."""
        self.model_path = Path(model_path)
        self.threads = threads
        self._model: CxrModel | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image").condition(ConditionType.MESSAGE_AVAILABLE)
        spec.output("prediction")

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        source = op_input.receive("image")
        op_output.emit(self.classify(source), "prediction")

    @property
    def model(self) -> CxrModel:
        if self._model is None:
            if self.threads:
                torch.set_num_threads(self.threads)
            started = time.perf_counter()
            self._model = CxrModel.load(self.model_path)
            log.info(
                "model %s %s loaded in %.3f s",
                self._model.info.name,
                self._model.info.version,
                time.perf_counter() - started,
            )
        return self._model

    def classify(self, source: SourceImage) -> CxrPrediction:
        """Preprocess ``source`` for the model and run it."""
        model = self.model
        started = time.perf_counter()
        image = model.preprocess(source)
        prepared = time.perf_counter()
        probabilities = model.probabilities(image)
        done = time.perf_counter()
        timing = dict(source.timing, preprocess_seconds=prepared - started, forward_seconds=done - prepared)
        return CxrPrediction(image, model, probabilities, timing)


def _finding(item: Any, bundle: Path) -> FindingSpec:
    try:
        code = item["code"]
        spec = FindingSpec(
            name=str(item["name"]),
            code={"system": str(code["system"]), "code": str(code["code"]), "display": str(code["display"])},
            threshold=float(item["threshold"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelBundleError(f"bad finding {item!r} in {bundle / 'configs' / 'metadata.json'}: {exc}") from None
    if not 0.0 <= spec.threshold <= 1.0:
        raise ModelBundleError(f"finding {spec.name}: threshold {spec.threshold} is not a probability")
    return spec
