"""Train the cxr_triage demonstration model on procedurally generated chest radiographs; write a MONAI Bundle.

    python -m apps.cxr_triage.train --out apps/cxr_triage/model [--seed 0]      # the shipped model (~10 min)
    python -m apps.cxr_triage.train --out /tmp/b --quick                        # smoke run (seconds)

Data: :mod:`apps.cxr_triage.synthetic` draws every image from seeded generators (one stream each for training,
validation and test), so a run is reproducible on the same software stack (single-threaded CPU). Training images
are drawn fresh for every step (no image is seen twice); the validation set chooses each finding's decision
threshold (Youden's J = sensitivity + specificity - 1, Youden 1950); the held-out test set gives the reported
AUCs. Network: MONAI DenseNet121 (Huang et al. 2017; block configuration 6/12/24/16 kept) narrowed to
``init_features=16, growth_rate=8`` so that it trains on one CPU core in minutes and ships in ~2 MB.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from apps.cxr_triage.synthetic import CTR_ENLARGED, CTR_NORMAL, FINDINGS, synthetic_batch
from operators.cxr_classifier_operator import sigmoid_probabilities
from operators.drift_reference import build_reference, cases_to_columns, image_features, write_reference
from operators.feedback import evaluate_feedback, feedback_card
from operators.radiograph import WINDOW_PERCENTILES

log = logging.getLogger("cxr_triage.train")

MODEL_NAME = "cxr_triage_densenet121_synthetic"
MODEL_VERSION = "0.1.0"
SNOMED = "http://snomed.info/sct"

#: SNOMED CT concepts of the findings (disorder hierarchy), in output-channel order.
FINDING_CODES: dict[str, tuple[str, str]] = {
    "cardiomegaly": ("8186001", "Cardiomegaly"),
    "edema": ("19242006", "Pulmonary edema"),
    "effusion": ("60046008", "Pleural effusion"),
    "pneumothorax": ("36118008", "Pneumothorax"),
    "consolidation": ("95436008", "Lung consolidation"),
}

#: Input side: 224 is DenseNet's design size (and CheXNet's); it keeps a pleural line or a Kerley line at about
#: one pixel on a ~35 cm thorax and gives Grad-CAM a 7 x 7 grid.
FULL = {"size": 224, "steps": 340, "batch": 24, "validation": 600, "test": 1000, "init_features": 16, "growth_rate": 8,
        "reference": 400}
QUICK = {"size": 64, "steps": 3, "batch": 8, "validation": 48, "test": 48, "init_features": 8, "growth_rate": 4,
         "reference": 24}
#: Index of the seeded stream the drift reference images are drawn from (0-2: training, validation, test).
REFERENCE_STREAM = 3


def network_def(out_channels: int, init_features: int, growth_rate: int) -> dict[str, Any]:
    """The bundle's ``network_def`` config item (instantiated by :class:`monai.bundle.ConfigParser`)."""
    return {
        "_target_": "monai.networks.nets.DenseNet121",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": out_channels,
        "init_features": init_features,
        "growth_rate": growth_rate,
        "block_config": [6, 12, 24, 16],
        "bn_size": 4,
    }


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises Youden's J (sensitivity + specificity - 1) on a validation set."""
    if labels.min() == labels.max():  # one class only (a tiny smoke run): no ROC to choose from
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 0.0, 1.0))


def train(out: Path, seed: int, quick: bool, feedback: Path | None = None) -> dict[str, Any]:
    """Train, choose thresholds, test, and write the bundle to ``out``; returns the metadata written. With
    ``feedback`` (a sign-off feedback export) the deployed model's agreement with the physicians is scored and
    kept in the metadata (``site_feedback``)."""
    cfg = dict(QUICK if quick else FULL)
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train_seq, val_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
    train_rng, val_rng, test_rng = (np.random.default_rng(s) for s in (train_seq, val_seq, test_seq))
    size = cfg["size"]
    started = time.perf_counter()

    net_def = network_def(len(FINDINGS), cfg["init_features"], cfg["growth_rate"])
    from monai.bundle import ConfigParser

    network = ConfigParser({"network_def": net_def}).get_parsed_content("network_def", instantiate=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=cfg["steps"], pct_start=0.15)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    network.train()
    running = 0.0
    for step in range(1, cfg["steps"] + 1):
        images, labels = synthetic_batch(train_rng, cfg["batch"], size)
        optimizer.zero_grad()
        loss = loss_fn(network(torch.from_numpy(images)), torch.from_numpy(labels))
        loss.backward()
        optimizer.step()
        schedule.step()
        running = 0.95 * running + 0.05 * loss.item() if step > 1 else loss.item()
        if step % 20 == 0 or step == cfg["steps"]:
            log.info("step %d/%d loss %.4f (%.0f s)", step, cfg["steps"], running, time.perf_counter() - started)
    train_seconds = time.perf_counter() - started

    val_images, val_labels = synthetic_batch(val_rng, cfg["validation"], size)
    test_images, test_labels = synthetic_batch(test_rng, cfg["test"], size)
    val_scores = sigmoid_probabilities(network, val_images)
    test_scores = sigmoid_probabilities(network, test_images)
    findings = []
    for k, name in enumerate(FINDINGS):
        threshold = youden_threshold(val_labels[:, k], val_scores[:, k])
        positive = test_labels[:, k] == 1
        predicted = test_scores[:, k] >= threshold
        code, display = FINDING_CODES[name]
        auc = _auc(test_labels[:, k], test_scores[:, k])
        findings.append(
            {
                "name": name,
                "code": {"system": SNOMED, "code": code, "display": display},
                "threshold": round(threshold, 4),
                "test_auc": auc,
                "test_sensitivity": _rate(predicted[positive]),
                "test_specificity": _rate(~predicted[~positive]),
                "test_prevalence": round(float(positive.mean()), 4),
            }
        )
        log.info("%s: threshold %.3f, test AUC %s", name, threshold, _num(auc))

    metadata = bundle_metadata(cfg, seed, quick, findings, train_seconds, time.perf_counter() - started)
    if feedback is not None:
        metadata["site_feedback"] = evaluate_feedback(feedback, "cxr_triage")
    write_bundle(out, network, net_def, metadata, size)
    write_reference(out, drift_reference(network, size, seed, cfg["reference"]))
    return metadata


def drift_reference(network: torch.nn.Module, size: int, seed: int, n: int) -> dict[str, Any]:
    """The bundle's drift reference (operators.drift_reference): ``n`` synthetic radiographs from their own
    seeded stream, through the same preprocessing as at inference; inputs are the network input's intensity
    mean and spread, outputs each finding's probability."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(REFERENCE_STREAM + 1)[REFERENCE_STREAM])
    images, _ = synthetic_batch(rng, n, size)
    probabilities = sigmoid_probabilities(network.eval(), images)
    inputs = cases_to_columns(image_features(img) for img in images)
    outputs = {name: probabilities[:, k].tolist() for k, name in enumerate(FINDINGS)}
    return build_reference(inputs, outputs, source=f"{n} synthetic radiographs (apps/cxr_triage/synthetic.py, seed "
                                                   f"{seed}, stream {REFERENCE_STREAM}) through the shipped network")


def write_drift_reference(bundle: Path, n: int | None = None) -> Path:
    """Write the drift reference of an existing bundle with its own weights (no training)."""
    from operators.cxr_classifier_operator import CxrModel

    model = CxrModel.load(bundle, device="cpu")
    training = model.info.metadata.get("training") or {}
    count = n or (QUICK if training.get("quick") else FULL)["reference"]
    torch.set_num_threads(1)
    return write_reference(bundle, drift_reference(model.network, model.size, int(training.get("seed", 0)), count))


def bundle_metadata(
    cfg: dict[str, Any], seed: int, quick: bool, findings: list[dict[str, Any]], train_s: float, total_s: float
) -> dict[str, Any]:
    """``configs/metadata.json``: the MONAI Bundle keys plus ``demonstration`` and our ``findings``."""
    import monai

    size = cfg["size"]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "name": MODEL_NAME,
        "version": MODEL_VERSION + ("+quick" if quick else ""),
        "changelog": {MODEL_VERSION: "first demonstration model, trained on procedurally generated radiographs"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__,
        "numpy_version": np.__version__,
        "optional_packages_version": {"scikit-learn": _version("sklearn"), "scipy": _version("scipy")},
        "task": "Multi-label finding classification of frontal chest radiographs (CR/DX) with Grad-CAM heat-maps",
        "description": (
            "MONAI DenseNet121 (init_features {f}, growth_rate {g}) trained from scratch on synthetic PA chest "
            "radiographs whose findings are drawn with their radiographic signs. It learns those synthetic signs, "
            "not real disease."
        ).format(f=cfg["init_features"], g=cfg["growth_rate"]),
        "authors": "interop imaging-AI node",
        "copyright": "interop imaging-AI node; synthetic training data, no patient data",
        "intended_use": "Demonstration of the imaging-AI node's CXR triage path. Not for clinical use.",
        "demonstration": True,
        "data_source": f"procedurally generated (apps/cxr_triage/synthetic.py), seed {seed}",
        "data_type": "synthetic",
        "image_classes": "one-channel frontal chest radiograph, letterboxed, intensity 0..1",
        "label_classes": ", ".join(FINDINGS),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CR/DX",
                    "num_channels": 1,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "labels",
                    "num_channels": len(FINDINGS),
                    "spatial_shape": [len(FINDINGS)],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): name for i, name in enumerate(FINDINGS)},
                    "activation": "sigmoid",
                }
            },
        },
        "preprocessing": {
            "size": size,
            "window_percentiles": list(WINDOW_PERCENTILES),
            "steps": "modality LUT, VOI LUT sequence if any, percentile window, MONOCHROME1 inverted, "
            "aspect-keeping resize (area) centred with zero padding",
        },
        "findings": findings,
        "performance": {"test_auc": {f["name"]: f["test_auc"] for f in findings}},
        "training": {
            "seed": seed,
            "quick": quick,
            "steps": cfg["steps"],
            "batch": cfg["batch"],
            "train_images": cfg["steps"] * cfg["batch"],
            "validation_images": cfg["validation"],
            "test_images": cfg["test"],
            "optimizer": "AdamW, one-cycle learning rate (max 3e-3), binary cross-entropy",
            "threshold_rule": "Youden's J on the validation set",
            "init_features": cfg["init_features"],
            "growth_rate": cfg["growth_rate"],
            "cardiothoracic_ratio": {"normal": list(CTR_NORMAL), "cardiomegaly": list(CTR_ENLARGED)},
            "train_seconds": round(train_s, 1),
            "total_seconds": round(total_s, 1),
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        },
    }


def write_bundle(out: Path, network: torch.nn.Module, net_def: dict[str, Any], meta: dict[str, Any], size: int) -> None:
    """Write ``configs/{metadata,inference}.json``, ``models/model.pt`` (state_dict) and ``docs/README.md``."""
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    inference = {
        "network_def": net_def,
        "image_size": size,
        "gradcam_target_layer": "class_layers.relu",
    }
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n", encoding="utf-8")
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    state = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    torch.save(state, out / "models" / "model.pt")
    (out / "docs" / "README.md").write_text(model_card(meta) + feedback_card(meta), encoding="utf-8")


def model_card(meta: dict[str, Any]) -> str:
    """The model card (docs/README.md), with the numbers of this run."""
    rows = "\n".join(
        f"| {f['name']} | {f['code']['code']} {f['code']['display']} | {f['test_prevalence']:.2f} | "
        f"{_num(f['test_auc'])} | {f['threshold']:.3f} | {_num(f['test_sensitivity'])} | "
        f"{_num(f['test_specificity'])} |"
        for f in meta["findings"]
    )
    t = meta["training"]
    pre = meta["preprocessing"]
    ctr = t["cardiothoracic_ratio"]
    enlarged = f"cardiothoracic ratio {ctr['cardiomegaly'][0]}..{ctr['cardiomegaly'][1]}"
    normal = f"{ctr['normal'][0]}..{ctr['normal'][1]}"
    return f"""# {meta["name"]} {meta["version"]}: demonstration model, not for clinical use

**What it is.** A MONAI DenseNet121 (2-D, one input channel, five sigmoid outputs; the DenseNet-121 block
configuration 6/12/24/16, narrowed to init_features {t["init_features"]} and growth_rate {t["growth_rate"]}) that
reads a frontal chest radiograph and gives a probability for each of five findings; the app adds a Grad-CAM
heat-map (layer `class_layers.relu`, a 7 x 7 grid at this input size) for each finding called present. The
definition is `configs/inference.json` (`network_def`, `image_size`, `gradcam_target_layer`), the weights
`models/model.pt` (a state_dict), loaded with `monai.bundle.ConfigParser`; not TorchScript, because Grad-CAM
hooks into the module tree.

**What it learned from: synthetic images only.** No chest radiograph data set can be downloaded where this
model was built, so every training, validation and test image was drawn by `apps/cxr_triage/synthetic.py`
(seeded, reproducible). The drawing is a cartoon of a PA chest film: body outline, lung fields with vascular
markings, mediastinum and heart, diaphragm domes with sharp costophrenic angles, ribs, clavicles, spine;
size, position, aspect, contrast, gamma, blur and noise vary, and normal images carry confounders (small
round densities, breast shadows, side markers). Each finding is drawn with its textbook sign:

| finding | drawn as |
| --- | --- |
| cardiomegaly | {enlarged} (normal hearts {normal}) |
| edema | bilateral perihilar haze, indistinct vessels, Kerley B lines at the lateral bases |
| effusion | basal opacity with a meniscus, blunting the costophrenic angle (one or both sides) |
| pneumothorax | lucent apico-lateral rim without lung markings, bounded by a thin pleural line |
| consolidation | dense ill-defined focal or lobar opacity, air bronchograms in most |

Findings co-occur through one latent "heart failure" state (edema with cardiomegaly and effusion);
pneumothorax is independent, consolidation slightly more frequent with effusion.

**It learns these synthetic signs, not real disease.** Its outputs on real radiographs mean nothing
clinically (on the real chest CR `RG1_UNCI.dcm` it calls several findings present: the real image is outside
what it has seen). The point of the model is to exercise the real code path (DICOM in, preprocessing,
inference, Grad-CAM, structured result out) so that a site can drop in its own bundle. Every result it
produces says "demonstration model, not for clinical use" (`"demonstration": true` in `configs/metadata.json`).

## Training

`python -m apps.cxr_triage.train --out <dir> --seed {t["seed"]}` reproduces it: {t["steps"]} steps of
{t["batch"]} freshly drawn images ({t["train_images"]} images, none seen twice), AdamW with a one-cycle
learning rate, binary cross-entropy; one CPU thread, {t["train_seconds"]:.0f} s of training and
{t["total_seconds"]:.0f} s in all (measured on a 2-core machine shared with other jobs).

Input: {pre["size"]} x {pre["size"]}, DenseNet's design size: a pleural line or a Kerley line stays about one
pixel wide on a ~35 cm thorax, and Grad-CAM gets a 7 x 7 grid. Preprocessing: {pre["steps"]} (percentiles
{pre["window_percentiles"]}). The training images go through the same code (`operators/radiograph.py`) as
DICOM images at inference.

## Results on the held-out synthetic test set ({t["test_images"]} images)

Thresholds were chosen on a separate synthetic validation set ({t["validation_images"]} images) by Youden's J
and are the ones the app applies (`findings[].threshold` in `configs/metadata.json`).

| finding | SNOMED CT | prevalence | AUC | threshold | sensitivity | specificity |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

These numbers describe how well the network finds the *drawn* signs in *drawn* images, which are far more
conspicuous and regular than real disease; they say nothing about real radiographs.

## Codes

SNOMED CT concepts (disorders): 8186001 Cardiomegaly, 19242006 Pulmonary edema, 60046008 Pleural effusion,
36118008 Pneumothorax, 95436008 Lung consolidation. They were checked against published concept tables
(OMOP vocabulary, public terminology mappings), not against a licensed SNOMED CT release.

## Intended use and limits

Demonstration and integration testing only. Not for clinical use, not validated on any real image, not a
medical device. Frontal (PA/AP) views only; the app refuses lateral views.
"""


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (4 decimals); None when the set holds one class only (a tiny smoke run)."""
    return round(float(roc_auc_score(labels, scores)), 4) if labels.min() != labels.max() else None


def _rate(hits: np.ndarray) -> float | None:
    """The share of True in ``hits`` (4 decimals); None for an empty set."""
    return round(float(hits.mean()), 4) if hits.size else None


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "absent"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds), not a usable model")
    parser.add_argument("--reference-only", action="store_true",
                        help="only write configs/drift_reference.json of the bundle at --out from its own weights")
    parser.add_argument("--feedback", type=Path, help="sign-off feedback export (CSV or JSON of /api/feedback): "
                        "scored as an extra evaluation set, see apps/README.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.reference_only:
        print(write_drift_reference(args.out))
        return 0
    meta = train(args.out, args.seed, args.quick, args.feedback)
    print(json.dumps(meta["performance"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
