"""cxr_triage: radiograph preprocessing, the shipped model on fresh synthetic images, Grad-CAM, the app end to end."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sklearn.metrics import roc_auc_score

from apps.cxr_triage.synthetic import FINDINGS, render_chest, synthetic_batch, to_dicom
from operators.app_result import AppResult
from operators.cxr_classifier_operator import CxrModel, CxrPrediction, sigmoid_probabilities
from operators.cxr_image_loader_operator import NoRadiographError, choose_frontal_image
from operators.drift_reference import output_features
from operators.gradcam_operator import gradcam_maps
from operators.launch import STACK_BYTES
from operators.model_bundle import DEMONSTRATION_NOTICE
from operators.radiograph import (
    Letterbox,
    SourceImage,
    decode_pixels,
    preprocess,
    radiograph_from_dataset,
    unletterbox,
)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "apps" / "cxr_triage" / "model"
RG1 = Path(str(get_testdata_file("RG1_UNCI.dcm")))
CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))


# -- preprocessing ----------------------------------------------------------------------------------------------


def _radiograph(stored: np.ndarray, photometric: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "CR"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def test_preprocess_inverts_monochrome1() -> None:
    stored = np.full((64, 64), 100, np.uint16)
    stored[:, 32:] = 4000  # high stored values: white in MONOCHROME2, black in MONOCHROME1
    mono2 = radiograph_from_dataset(_radiograph(stored, "MONOCHROME2"), 64).input[0]
    mono1 = radiograph_from_dataset(_radiograph(stored, "MONOCHROME1"), 64).input[0]
    assert mono2[:, 40:].mean() > 0.9 and mono2[:, :24].mean() < 0.1
    assert mono1[:, 40:].mean() < 0.1 and mono1[:, :24].mean() > 0.9


def test_preprocess_keeps_aspect_pads_and_scales_to_unit_range() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(1000.0, 200.0, (300, 150))  # twice as tall as wide
    out, box = preprocess(image, 128)
    assert out.shape == (1, 128, 128) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (box.height, box.width, box.top, box.left) == (128, 64, 0, 32)
    assert np.all(out[0, :, :32] == 0.0) and np.all(out[0, :, 96:] == 0.0)  # padding left and right
    assert out[0, :, 32:96].std() > 0.05


def test_unletterbox_maps_network_grid_to_source_rows_and_columns() -> None:
    box = Letterbox.fit(1955, 1841, 224)
    grid = np.zeros((224, 224), np.float32)
    grid[: 224 // 2] = 1.0  # the upper half of the network input
    out = unletterbox(grid, box)
    assert out.shape == (1955, 1841) and out.dtype == np.float32
    assert out[:900].mean() > 0.99 and out[1100:].mean() < 0.01


def test_preprocess_rg1_unci_reads_the_chest_bright_on_dark() -> None:
    ds = pydicom.dcmread(RG1)  # MONOCHROME1: lungs are high stored values
    image = radiograph_from_dataset(ds, 224)
    assert image.letterbox.height == 224 and image.letterbox.width == round(1841 * 224 / 1955)
    x = image.input[0]
    lung = x[70:120, 40:80].mean()  # patient's right mid-lung field
    spine = x[70:120, 105:118].mean()  # mediastinum over the spine
    assert lung < spine - 0.2, (lung, spine)


def test_choose_frontal_image_skips_laterals_and_non_images_and_prefers_for_presentation() -> None:
    lateral = _radiograph(np.zeros((4, 4)), "MONOCHROME2")
    lateral.ViewPosition = "LL"
    report = Dataset()
    report.Modality = "SR"
    frontal = _radiograph(np.zeros((4, 4)), "MONOCHROME2")
    frontal.ViewPosition = "PA"
    raw = _radiograph(np.zeros((4, 4)), "MONOCHROME2")
    raw.PresentationIntentType = "FOR PROCESSING"
    assert choose_frontal_image([report, lateral, raw, frontal]) is frontal
    assert choose_frontal_image([report, raw]) is raw
    with pytest.raises(NoRadiographError, match="no frontal CR/DX image.*CR/LL"):
        choose_frontal_image([report, lateral])


# -- the shipped model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> Iterator[CxrModel]:
    """The shipped bundle, run on one thread as the app does (resources.cpu in app.yaml)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield CxrModel.load(BUNDLE)
    torch.set_num_threads(threads)


def test_model_separates_fresh_synthetic_positives_from_negatives(model: CxrModel) -> None:
    rng = np.random.default_rng(20261122)  # not a training, validation or test stream
    images, labels = synthetic_batch(rng, 100, model.size)
    scores = sigmoid_probabilities(model.network, images)
    for k, name in enumerate(FINDINGS):
        assert labels[:, k].min() == 0 and labels[:, k].max() == 1, name
        auc = roc_auc_score(labels[:, k], scores[:, k])
        assert auc > 0.8, f"{name}: AUC {auc:.3f} on fresh synthetic images"


def test_model_thresholds_and_version_come_from_metadata(model: CxrModel) -> None:
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert [f.name for f in model.findings] == list(FINDINGS)
    assert [f.threshold for f in model.findings] == [f["threshold"] for f in meta["findings"]]
    assert model.info.version == meta["version"] and model.info.notice == DEMONSTRATION_NOTICE
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    assert size < 5_000_000, f"shipped bundle is {size} bytes"


def test_gradcam_heatmap_has_source_shape_and_is_not_constant(model: CxrModel) -> None:
    ds = pydicom.dcmread(RG1)
    image = model.preprocess(SourceImage(ds, decode_pixels(ds)))
    prediction = CxrPrediction(image, model, model.probabilities(image))
    maps = gradcam_maps(prediction, ["cardiomegaly", "effusion"])
    for heatmap in maps.values():
        assert heatmap.shape == (ds.Rows, ds.Columns) and heatmap.dtype == np.float32
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        assert heatmap.std() > 0.05
    assert not np.allclose(maps["cardiomegaly"], maps["effusion"])


# -- the app as the job runner runs it --------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stderr: str
    output: Path
    seconds: float


def _holoscan_stack() -> None:
    """In the child before exec, as the job runner does: the 32 MB stack Holoscan wants (no re-exec needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < STACK_BYTES:
        resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES if hard == resource.RLIM_INFINITY else hard, hard))


def _start(input_dir: Path, output_dir: Path, model: Path, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "apps.cxr_triage", "-i", str(input_dir), "-o", str(output_dir), "-m", str(model)]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_holoscan_stack
    )


def _folder(root: Path, name: str, *files: Path) -> Path:
    folder = root / name
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every app run of this module, started together (child processes, cwd a temp dir) and awaited."""
    root = tmp_path_factory.mktemp("cxr_runs")
    synthetic = root / "synthetic"
    synthetic.mkdir()
    # one synthetic patient, drawn twice from the same seed: only the heart width differs
    normal = render_chest(np.random.default_rng(7), {}, 520, 480, ctr=0.42)
    enlarged = render_chest(np.random.default_rng(7), {"cardiomegaly": True}, 520, 480, ctr=0.62)
    empty_bundle = root / "not_a_bundle"
    empty_bundle.mkdir()
    plans = {
        "rg1": (_folder(root, "rg1", RG1, CT_SMALL), BUNDLE),  # a CR with a CT series beside it
        "normal": (_folder(root, "normal", to_dicom(normal, synthetic / "normal.dcm", monochrome1=True)), BUNDLE),
        "enlarged": (
            _folder(root, "enlarged", to_dicom(enlarged, synthetic / "enlarged.dcm", monochrome1=True)),
            BUNDLE,
        ),
        "no_cr": (_folder(root, "no_cr", CT_SMALL), BUNDLE),
        "bad_model": (_folder(root, "bad_model", RG1), empty_bundle),
        "missing_model": (_folder(root, "missing_model", RG1), root / "no_such_bundle"),
    }
    started = time.perf_counter()
    procs = {name: _start(inp, root / f"out_{name}", model, cwd=root) for name, (inp, model) in plans.items()}
    results = {}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=240)
        results[name] = Run(proc.returncode, stderr, root / f"out_{name}", time.perf_counter() - started)
    yield results


def test_app_on_rg1_unci_writes_five_findings_with_notice_and_model_version(runs: dict[str, Run]) -> None:
    run = runs["rg1"]
    assert run.returncode == 0, run.stderr[-2000:]
    result = AppResult.read(run.output)
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert [f.name for f in result.findings] == list(FINDINGS)
    assert result.notice == DEMONSTRATION_NOTICE and result.model.demonstration
    assert result.model.version == meta["version"] and result.model.name == meta["name"]
    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    assert result.inputs.sop_instance_uids == [ds.SOPInstanceUID]
    assert result.inputs.series_instance_uid == ds.SeriesInstanceUID
    assert result.inputs.study_instance_uid == ds.StudyInstanceUID and result.inputs.patient_id == ds.PatientID
    for finding in result.findings:
        assert finding.threshold == next(f["threshold"] for f in meta["findings"] if f["name"] == finding.name)
        assert finding.sop_instance_uid == ds.SOPInstanceUID
        assert (finding.heatmap is not None) == finding.present
        if finding.heatmap:
            heatmap = np.load(run.output / finding.heatmap)
            assert heatmap.shape == (1955, 1841) and heatmap.dtype == np.float32
    assert 0.0 < result.timing["inference_seconds"] < 10.0
    reference = json.loads((BUNDLE / "configs" / "drift_reference.json").read_text())
    assert set(result.monitoring) == set(reference["inputs"]) == {"intensity_mean", "intensity_std"}
    assert 0.0 < result.monitoring["intensity_mean"] < 1.0
    assert set(output_features(result.as_json())) == set(reference["outputs"]) == set(FINDINGS)


def test_app_scores_enlarged_heart_higher_for_cardiomegaly(runs: dict[str, Run]) -> None:
    assert runs["normal"].returncode == 0, runs["normal"].stderr[-2000:]
    assert runs["enlarged"].returncode == 0, runs["enlarged"].stderr[-2000:]
    normal = {f.name: f for f in AppResult.read(runs["normal"].output).findings}
    enlarged = {f.name: f for f in AppResult.read(runs["enlarged"].output).findings}
    assert enlarged["cardiomegaly"].probability > normal["cardiomegaly"].probability + 0.3
    assert enlarged["cardiomegaly"].present and not normal["cardiomegaly"].present


def test_app_without_cr_or_dx_image_exits_nonzero_with_reason(runs: dict[str, Run]) -> None:
    run = runs["no_cr"]
    assert run.returncode != 0
    assert "Exception occurred for operator: 'image_loader'" in run.stderr
    assert "no CR/DX image among the inputs" in run.stderr
    assert not (run.output / "result.json").exists()


def test_app_with_folder_that_is_no_bundle_exits_nonzero_with_reason(runs: dict[str, Run]) -> None:
    run = runs["bad_model"]
    assert run.returncode != 0
    assert "Exception occurred for operator: 'classifier'" in run.stderr
    assert "no model bundle at" in run.stderr and "not_a_bundle" in run.stderr
    assert not (run.output / "result.json").exists()


def test_app_with_missing_model_path_exits_nonzero_with_reason(runs: dict[str, Run]) -> None:
    run = runs["missing_model"]
    assert run.returncode != 0
    assert "--model" in run.stderr and "no_such_bundle" in run.stderr
    assert not (run.output / "result.json").exists()


# -- training ---------------------------------------------------------------------------------------------------


def test_train_quick_run_writes_a_loadable_bundle(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "apps.cxr_triage.train", "--out", str(tmp_path / "b"), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = CxrModel.load(tmp_path / "b")
    assert [f.name for f in bundle.findings] == list(FINDINGS) and bundle.info.demonstration
    assert (tmp_path / "b" / "docs" / "README.md").read_text().count("not for clinical use") >= 1
