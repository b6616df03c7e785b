"""SeverityClassifierOperator: lab features -> a calibrated multi-class prediction with exact per-feature contributions.

The model is a scikit-learn Pipeline in a MONAI-Bundle-shaped directory (``models/model.joblib``, read by path,
see operators.model_bundle) whose steps before the last transform each feature on its own (imputation,
per-column transforms, scaling) and whose last step is a linear softmax classifier (``coef_``,
``intercept_``, multinomial ``predict_proba``, e.g. ``LogisticRegression``). For the predicted class k::

    logit_k = intercept_k + sum_j coef_kj * z_j,    p = softmax(logit)

with ``z_j`` feature j after the pipeline's transforms; ``coef_kj * z_j`` is feature j's contribution, exact
(their sum with the intercept is the logit the probabilities come from). The bundle's ``metadata.json`` names
the features (``input_features``, in column order) and the classification (``classification``: name, code,
classes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from scipy.special import softmax

from operators.app_result import AppRef, AppResult, Classification, Coding, Contribution, Inputs, ModelRef
from operators.fhir_labs_loader_operator import LabFeatures, specs_from_metadata
from operators.model_bundle import ModelBundleError, ModelInfo, model_file, model_info

log = logging.getLogger(__name__)

MODEL_FILES = ("model.joblib",)


@dataclass(frozen=True)
class LoadedModel:
    """A tabular model ready to predict: the estimator, its feature order and what it classifies."""

    estimator: Any
    features: list[str]
    name: str
    code: Coding
    classes: list[str]
    info: ModelInfo


@dataclass(frozen=True)
class Prediction:
    classification: Classification
    #: The predicted class's logit, ``intercept + sum(contributions)``.
    logit: float
    intercept: float


def load_model(bundle: str | Path) -> LoadedModel:
    """Load and check the bundle at ``bundle``; :class:`ModelBundleError` with the reason when it is unusable."""
    path = Path(bundle)
    if not path.is_dir():
        raise ModelBundleError(f"model bundle not found at {path}")
    weights = model_file(path, *MODEL_FILES)
    info = model_info(path, weights)
    meta = info.metadata
    features = [s.name for s in specs_from_metadata(meta)]
    spec = meta.get("classification")
    if not isinstance(spec, Mapping) or not {"name", "code", "classes"} <= set(spec):
        raise ModelBundleError(f"{path}/configs/metadata.json has no 'classification' (name, code, classes)")
    try:
        estimator = joblib.load(weights)
    except Exception as exc:  # a corrupt or foreign pickle: say which file and why
        raise ModelBundleError(f"cannot load model {weights}: {exc}") from None
    last = estimator.steps[-1][1] if hasattr(estimator, "steps") else None
    if last is None or not hasattr(last, "coef_") or not hasattr(last, "intercept_"):
        raise ModelBundleError(f"{weights} is not a Pipeline ending in a linear classifier (coef_, intercept_)")
    if getattr(estimator, "n_features_in_", len(features)) != len(features):
        raise ModelBundleError(f"{weights} expects {estimator.n_features_in_} features, metadata lists {len(features)}")
    classes = [str(c) for c in estimator.classes_]
    if classes != [str(c) for c in spec["classes"]]:
        raise ModelBundleError(f"{weights} classes {classes} differ from metadata {spec['classes']}")
    return LoadedModel(estimator, features, str(spec["name"]), Coding(**spec["code"]), classes, info)


def _number(value: float | str | None) -> float:
    return np.nan if value is None else float(value)


def predict(model: LoadedModel, values: Mapping[str, float | None]) -> Prediction:
    """Probabilities per class and the predicted class's per-feature contributions for one patient."""
    row = np.array([[_number(values.get(f)) for f in model.features]])
    transformed = model.estimator[:-1].transform(row)
    if transformed.shape != (1, len(model.features)):
        raise ModelBundleError("the pipeline's transforms do not keep one column per feature")
    z = transformed[0]
    if not np.all(np.isfinite(z)):
        bad = [f"{f}={values.get(f)}" for f, v in zip(model.features, z, strict=True) if not np.isfinite(v)]
        raise ValueError(f"input outside the model's domain: {', '.join(bad)}")
    clf = model.estimator[-1]
    coef = np.asarray(clf.coef_, dtype=float)
    intercept = np.asarray(clf.intercept_, dtype=float)
    logits = intercept + coef @ z
    probabilities = softmax(logits)
    # The estimator's own probabilities must be the softmax of these logits, or the contributions would lie.
    if not np.allclose(probabilities, model.estimator.predict_proba(row)[0], atol=1e-9):
        raise ModelBundleError("the model's probabilities are not the softmax of its linear logits")
    k = int(np.argmax(probabilities))
    contributions = [
        Contribution(feature=f, value=values.get(f), contribution=float(coef[k, j] * z[j]))
        for j, f in enumerate(model.features)
    ]
    classification = Classification(
        name=model.name,
        code=model.code,
        predicted=model.classes[k],
        probabilities={c: float(p) for c, p in zip(model.classes, probabilities, strict=True)},
        contributions=contributions,
    )
    return Prediction(classification, float(logits[k]), float(intercept[k]))


def summary_line(classification: Classification, imputed: list[str]) -> str:
    probs = ", ".join(f"{c}: {p:.2f}" for c, p in classification.probabilities.items())
    top = max(classification.contributions, key=lambda c: abs(c.contribution), default=None)
    text = (
        f"{classification.name} {classification.predicted} "
        f"(p={classification.probabilities[classification.predicted]:.2f}; {probs})"
    )
    if top is not None:
        text += f"; largest contribution {top.feature} {top.contribution:+.2f}"
    if imputed:
        text += f"; imputed: {', '.join(imputed)}"
    return text


def build_result(model: LoadedModel, features: LabFeatures, app: AppRef, timing: dict[str, float]) -> AppResult:
    """The app's result for one patient (pure apart from the clock readings in ``timing``)."""
    start = time.perf_counter()
    prediction = predict(model, features.values)
    timing = {**timing, "inference_seconds": time.perf_counter() - start}
    imputed = [f for f in model.features if features.values.get(f) is None]
    return AppResult(
        app=app,
        model=ModelRef(**model.info.as_dict()),
        notice=model.info.notice,
        inputs=Inputs(patient_id=features.patient_id, observations=features.observations),
        classifications=[prediction.classification],
        summary=summary_line(prediction.classification, imputed),
        timing=timing,
        # The lab values as read (canonical units), imputed ones left out: the inputs whose drift is watched.
        monitoring={k: float(v) for k, v in features.values.items() if isinstance(v, int | float)},
    )


class SeverityClassifierOperator(Operator):
    """Classifies the features it receives with the bundle at ``model_path``.

    Named inputs:
        features: :class:`operators.fhir_labs_loader_operator.LabFeatures`.

    Named outputs:
        result: ``(AppResult, {})`` for ResultWriterOperator.
    """

    def __init__(self, fragment: Fragment, *args: object, model_path: Path, app: AppRef, **kwargs: object) -> None:
        self.model_path = Path(model_path)
        self.app = app
        self._model: LoadedModel | None = None
        self._load_seconds = 0.0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("features").condition(ConditionType.MESSAGE_AVAILABLE)
        spec.output("result")

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        features = op_input.receive("features")
        op_output.emit((self.classify(features), {}), "result")

    def model(self) -> LoadedModel:
        if self._model is None:
            start = time.perf_counter()
            self._model = load_model(self.model_path)
            self._load_seconds = time.perf_counter() - start
            log.info("loaded %s %s from %s", self._model.info.name, self._model.info.version, self.model_path)
        return self._model

    def classify(self, features: LabFeatures) -> AppResult:
        model = self.model()
        return build_result(model, features, self.app, {"model_load_seconds": self._load_seconds})
