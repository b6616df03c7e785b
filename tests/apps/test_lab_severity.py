"""lab_severity: FHIR labs -> features, the PBC stage model (contributions, CV, reproducibility), the app end to end."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from apps.lab_severity import train
from apps.lab_severity.example_bundle import bundle_from_row, pbc_row
from operators.app_result import AppResult
from operators.drift_reference import output_features
from operators.fhir_labs_loader_operator import (
    LabFeatures,
    LabInputError,
    features_from_bundle,
    specs_from_metadata,
)
from operators.model_bundle import DEMONSTRATION_NOTICE, ModelBundleError
from operators.severity_classifier_operator import load_model, predict

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "apps" / "lab_severity" / "model"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def specs() -> list[Any]:
    return specs_from_metadata(json.loads((BUNDLE / "configs" / "metadata.json").read_text()))


@pytest.fixture(scope="module")
def model() -> Any:
    return load_model(BUNDLE)


@pytest.fixture(scope="module")
def pbc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return train.load_pbc()


def _lab(oid: str, code: str, value: float, unit: str, when: str, status: str = "final", version: str = "1") -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": version},
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _bundle(*observations: dict, patient: dict | None = None) -> dict:
    patient = patient or {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-06-01"}
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient}] + [{"resource": o} for o in observations],
    }


def _required(when: str = "2024-03-01T08:00:00Z") -> list[dict]:
    """The six labs the routing rule requires, in canonical units."""
    return [
        _lab("bili", "1975-2", 1.2, "mg/dL", when),
        _lab("alb", "1751-7", 3.6, "g/dL", when),
        _lab("alp", "6768-6", 900.0, "U/L", when),
        _lab("ast", "1920-8", 80.0, "U/L", when),
        _lab("plt", "777-3", 250.0, "10*3/uL", when),
        _lab("pt", "5902-2", 10.5, "s", when),
    ]


def _without(observations: list[dict], oid: str) -> list[dict]:
    return [o for o in observations if o["id"] != oid]


# -- features_from_bundle -----------------------------------------------------------------------------------


def test_features_from_bundle_converts_si_units(specs: list[Any]) -> None:
    labs = _without(_without(_required(), "bili"), "alb")
    labs += [
        _lab("bili-si", "14631-6", 171.0, "umol/L", "2024-03-01T08:00:00Z"),
        _lab("alb-si", "1751-7", 36.0, "g/L", "2024-03-01T08:00:00Z"),
        _lab("cu", "5633-3", 2.0, "umol/(24.h)", "2024-03-01T08:00:00Z"),
    ]
    f = features_from_bundle(_bundle(*labs), specs)
    assert f.values["bilirubin"] == pytest.approx(171.0 * 584.66 / 10_000)  # ~10.0 mg/dL
    assert f.values["albumin"] == pytest.approx(3.6)
    assert f.values["copper"] == pytest.approx(2.0 * 63.546)
    assert "Observation/bili-si/_history/1" in f.observations


def test_features_from_bundle_takes_latest_observation(specs: list[Any]) -> None:
    labs = _without(_required(), "bili") + [
        _lab("bili-old", "1975-2", 0.8, "mg/dL", "2023-01-01T08:00:00Z"),
        _lab("bili-new", "1975-2", 2.5, "mg/dL", "2024-05-01T08:00:00Z", status="preliminary"),
        _lab("bili-mid", "1975-2", 1.9, "mg/dL", "2024-02-01"),
    ]
    f = features_from_bundle(_bundle(*labs), specs)
    assert f.values["bilirubin"] == 2.5
    assert "Observation/bili-new/_history/1" in f.observations
    assert not any("bili-old" in r or "bili-mid" in r for r in f.observations)


def test_features_from_bundle_prefers_final_at_the_same_time(specs: list[Any]) -> None:
    when = "2024-03-01T08:00:00Z"
    labs = _without(_required(), "ast") + [
        _lab("ast-final", "1920-8", 60.0, "U/L", when, status="final"),
        _lab("ast-prelim", "1920-8", 99.0, "U/L", when, status="preliminary", version="7"),
    ]
    assert features_from_bundle(_bundle(*labs), specs).values["ast"] == 60.0


def test_features_from_bundle_ignores_entered_in_error_and_cancelled(specs: list[Any]) -> None:
    labs = _without(_required(), "plt") + [
        _lab("plt-ok", "777-3", 180.0, "10*3/uL", "2024-01-01T08:00:00Z"),
        _lab("plt-eie", "777-3", 20.0, "10*3/uL", "2024-04-01T08:00:00Z", status="entered-in-error"),
        _lab("plt-cancelled", "777-3", 30.0, "10*3/uL", "2024-04-02T08:00:00Z", status="cancelled"),
    ]
    f = features_from_bundle(_bundle(*labs), specs)
    assert f.values["platelet"] == 180.0
    assert not any("plt-eie" in r or "plt-cancelled" in r for r in f.observations)


def test_features_from_bundle_refuses_unknown_unit(specs: list[Any]) -> None:
    labs = _without(_required(), "bili") + [_lab("bili-x", "1975-2", 20.0, "mmol/L", "2024-03-01T08:00:00Z")]
    with pytest.raises(LabInputError, match=r"Observation/bili-x.*'mmol/L'.*mg/dL, umol/L"):
        features_from_bundle(_bundle(*labs), specs)


def test_features_from_bundle_reports_missing_optional_as_none(specs: list[Any]) -> None:
    f = features_from_bundle(_bundle(*_required()), specs)
    for name in ("copper", "ascites", "hepatomegaly", "spiders", "edema"):
        assert f.values[name] is None
    assert len(f.observations) == 6
    assert f.values["sex_female"] == 1.0
    assert f.values["age"] == pytest.approx((2024 + 60 / 366) - (1950 + 152 / 365), abs=0.01)


def test_features_from_bundle_refuses_missing_required_lab(specs: list[Any]) -> None:
    with pytest.raises(LabInputError, match=r"required input missing.*Aspartate aminotransferase.*LOINC 1920-8"):
        features_from_bundle(_bundle(*_without(_required(), "ast")), specs)


def test_features_from_bundle_reads_findings(specs: list[Any]) -> None:
    snomed = "http://snomed.info/sct"
    base = {
        "resourceType": "Observation",
        "meta": {"versionId": "2"},
        "status": "final",
        "effectiveDateTime": "2024-03-01",
    }
    ascites = {**base, "id": "asc", "code": {"coding": [{"system": snomed, "code": "389026000"}]}, "valueBoolean": True}
    edema = {
        **base,
        "id": "ede",
        "code": {"coding": [{"system": snomed, "code": "267038008"}]},
        "valueCodeableConcept": {"coding": [{"system": snomed, "code": "2667000"}]},
    }
    f = features_from_bundle(_bundle(*_required(), ascites, edema), specs)
    assert (f.values["ascites"], f.values["edema"]) == (1.0, 0.0)
    assert "Observation/ede/_history/2" in f.observations
    edema["valueCodeableConcept"] = {"coding": [{"system": snomed, "code": "24484000"}]}  # "severe": not a value
    with pytest.raises(LabInputError, match="Observation/ede.*Edema"):
        features_from_bundle(_bundle(*_required(), edema), specs)


def test_features_from_bundle_refuses_another_patients_observation(specs: list[Any]) -> None:
    labs = _required()
    labs[0]["subject"] = {"reference": "Patient/other"}
    with pytest.raises(LabInputError, match="Patient/other"):
        features_from_bundle(_bundle(*labs), specs)


# -- the model ----------------------------------------------------------------------------------------------


def _values(model: Any, x: np.ndarray) -> dict[str, float | None]:
    return {f: (None if np.isnan(v) else float(v)) for f, v in zip(model.features, x, strict=True)}


def test_predict_contributions_reproduce_the_logit(model: Any, pbc: tuple) -> None:
    X, _, _ = pbc
    for i in (0, 5, 17, 200, 411):  # rows with and without missing values
        prediction = predict(model, _values(model, X[i]))
        c = prediction.classification
        k = model.classes.index(c.predicted)
        decision = model.estimator.decision_function(X[i : i + 1])[0]
        total = prediction.intercept + sum(item.contribution for item in c.contributions)
        assert total == pytest.approx(decision[k], abs=1e-9)
        assert prediction.intercept == pytest.approx(model.estimator[-1].intercept_[k])
        proba = model.estimator.predict_proba(X[i : i + 1])[0]
        assert [c.probabilities[k] for k in model.classes] == pytest.approx(list(proba), abs=1e-12)
        assert c.predicted == model.classes[int(np.argmax(proba))]
        imputed = [item.feature for item in c.contributions if item.value is None]
        assert imputed == [f for f, v in zip(model.features, X[i], strict=True) if np.isnan(v)]


def test_predict_differs_across_real_patients(model: Any, pbc: tuple) -> None:
    X, _, _ = pbc
    results = [predict(model, _values(model, x)).classification for x in X[::10]]
    assert len({r.predicted for r in results}) >= 2
    p4 = model.estimator.predict_proba(X)[:, model.classes.index("4")]
    assert p4.std() > 0.1 and p4.min() < 0.1 and p4.max() > 0.8


def test_cross_validation_beats_majority_class_baseline(pbc: tuple) -> None:
    X, y, _ = pbc
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    baseline = f1_score(
        y, cross_val_predict(DummyClassifier(strategy="most_frequent"), X, y, cv=folds), average="macro"
    )
    metrics = train.cross_validate(X, y, seed=0)
    assert metrics["macro_f1"] > baseline + 0.1
    assert metrics["auc_ovr_macro"] > 0.6
    assert metrics["log_loss"] < metrics["comparison"]["training_prior_log_loss"]


def test_train_reproduces_the_shipped_bundle(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "apps.lab_severity.train", "--out", str(tmp_path / "a")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    train.train(tmp_path / "b", seed=0)
    for rel in ("configs/metadata.json", "docs/metrics.json", "docs/README.md"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # The pickles hold the same numbers; their bytes can differ between processes (pickle memoises by identity).
    a, b = (load_model(tmp_path / d).estimator for d in ("a", "b"))
    for step in ("impute", "scale", "clf"):
        for attr in ("statistics_", "mean_", "scale_", "coef_", "intercept_"):
            if hasattr(a.named_steps[step], attr):
                assert np.array_equal(getattr(a.named_steps[step], attr), getattr(b.named_steps[step], attr))
    shipped = json.loads((BUNDLE / "docs" / "metrics.json").read_text())
    assert json.loads((tmp_path / "a" / "docs" / "metrics.json").read_text()) == shipped
    X, _, _ = train.load_pbc()
    fresh = load_model(tmp_path / "a").estimator.predict_proba(X)
    assert np.array_equal(fresh, load_model(BUNDLE).estimator.predict_proba(X))
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["demonstration"] is True and meta["metrics"]["macro_f1"] == shipped["macro_f1"]


def test_load_model_refuses_bundle_without_weights(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_bytes((BUNDLE / "configs" / "metadata.json").read_bytes())
    with pytest.raises(ModelBundleError, match="no model file model.joblib"):
        load_model(tmp_path)


# -- the app as the job runner runs it ----------------------------------------------------------------------


def _run_app(tmp_path: Path, model: Path, bundle: dict) -> subprocess.CompletedProcess[str]:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "labs.json").write_text(json.dumps(bundle))
    cmd = [sys.executable, "-m", "apps.lab_severity", "-i", "in", "-o", "out", "-m", str(model)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_app_classifies_a_real_pbc_patient(tmp_path: Path, model: Any, specs: list[Any]) -> None:
    bundle = bundle_from_row(pbc_row(1), "pbc-1")
    run = _run_app(tmp_path, BUNDLE, bundle)
    assert run.returncode == 0, run.stderr[-2000:]
    result = AppResult.read(tmp_path / "out")
    assert result.notice == DEMONSTRATION_NOTICE and result.model.demonstration
    assert result.app.name == "lab_severity" and result.model.version == "1.0.0"
    assert result.inputs.patient_id == "pbc-1"
    assert "Observation/pbc-1-bilirubin/_history/1" in result.inputs.observations
    assert len(result.inputs.observations) == 11  # 7 labs + 4 findings; age and sex come from the Patient
    (c,) = result.classifications
    assert c.name == "pbc_histologic_stage" and set(c.probabilities) == {"1", "2", "3", "4"}
    assert [x.feature for x in c.contributions] == model.features
    expected = predict(model, features_from_bundle(copy.deepcopy(bundle), specs).values).classification
    assert c.probabilities == pytest.approx(expected.probabilities)
    assert c.predicted == expected.predicted
    assert result.timing["inference_seconds"] > 0 and c.predicted in result.summary
    # The inputs whose drift the node watches: the lab values read, each a feature of the bundle's reference.
    reference = json.loads((BUNDLE / "configs" / "drift_reference.json").read_text())
    assert result.monitoring["bilirubin"] == pytest.approx(pbc_row(1)["bili"]) and set(result.monitoring) <= set(
        reference["inputs"])
    assert set(output_features(result.as_json())) == set(reference["outputs"])


def test_app_fails_clearly_with_a_bad_model_path(tmp_path: Path) -> None:
    (tmp_path / "not-a-bundle").mkdir()
    run = _run_app(tmp_path, tmp_path / "not-a-bundle", bundle_from_row(pbc_row(2), "pbc-2"))
    assert run.returncode != 0
    assert "no model bundle at" in run.stderr and "not-a-bundle" in run.stderr
    assert not (tmp_path / "out" / "result.json").exists()


def test_lab_features_carry_version_specific_references(specs: list[Any]) -> None:
    f: LabFeatures = features_from_bundle(_bundle(*_required()), specs)
    assert all(r.startswith("Observation/") and "/_history/" in r for r in f.observations)
