"""mr_segmentation: the demo MR series' geometry, volumes in mL, the shipped bundle, the app end to end, training."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import yaml
from pydicom.uid import UID

from apps.mr_segmentation import __version__, train
from apps.mr_segmentation.make_demo_series import CH2, MR_IMAGE_STORAGE, make_demo_series
from operators.app_result import AppResult
from operators.drift_reference import output_features
from operators.launch import STACK_BYTES
from operators.model_bundle import DEMONSTRATION_NOTICE
from operators.segmentation_operator import SourceVolume, VolumeSegmenter
from operators.structure_volumes_operator import structure_volumes_ml
from operators.volume_geometry import RAS_TO_LPS, GeometryError, resample_labels, series_affine

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "mr_segmentation"
BUNDLE = APP_DIR / "model"
TEMPLATES = Path("/usr/share/mricron/templates")
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1001.1"
# Dice of the shipped model (0.1.0, seed 0) against the atlas labels on the 2 mm demo series, measured: cortex
# 0.94/0.93, cerebellum 0.92, thalamus 0.88, caudate 0.82/0.83, putamen 0.85/0.84, hippocampus 0.78/0.79; volumes
# within -1..+11 % of the atlas'. The bounds leave a margin; a constant or random label map scores ~0.
MIN_DICE_LARGE, MIN_DICE_SMALL = 0.85, 0.70  # cortex and cerebellum; the deep nuclei and hippocampus
VOLUME_TOLERANCE = 0.25

pytestmark = pytest.mark.skipif(not (TEMPLATES / "aal.nii.gz").is_file(), reason="mricron-data is not installed")


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mr_series")
    make_demo_series(out, step=2, patient_id="MRSEG-TEST", patient_name="Test^Colin", study_instance_uid=STUDY_UID,
                     series_instance_uid=SERIES_UID, accession_number="ACC-77")
    return out


@pytest.fixture(scope="module")
def slices(series_dir: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(series_dir.glob("*.dcm"))]


def _raise_stack() -> None:
    """As the job runner does in the child before exec, so that operators.launch need not re-exec."""
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    target = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (target, hard))


def _run_app(tmp_path: Path, inputs: Path, model: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``python -m apps.mr_segmentation -i -o -m`` in a child process with cwd = a temp dir, like the job runner."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "apps.mr_segmentation", "-i", str(inputs), "-o", str(out), "-m", str(model)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
                         preexec_fn=_raise_stack)
    return run, out


def _link_inputs(folder: Path, *files: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        (folder / f"{i:04d}_{f.name}").symlink_to(f)
    return folder


# -- the demo series --------------------------------------------------------------------------------------


def test_make_demo_series_writes_mr_image_storage_with_given_identity(slices: list[pydicom.Dataset]) -> None:
    assert len(slices) == 181 // 2
    first = slices[0]
    assert first.SOPClassUID == MR_IMAGE_STORAGE and first.file_meta.MediaStorageSOPClassUID == MR_IMAGE_STORAGE
    assert (first.Modality, first.PatientID, str(first.PatientName)) == ("MR", "MRSEG-TEST", "Test^Colin")
    assert (first.StudyInstanceUID, first.SeriesInstanceUID, first.AccessionNumber) == (STUDY_UID, SERIES_UID, "ACC-77")
    sops = {d.SOPInstanceUID for d in slices}
    assert len(sops) == len(slices) and all(UID(u).is_valid for u in sops)
    assert (first.Rows, first.Columns, first.BitsAllocated, first.BitsStored) == (217, 181, 16, 12)
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == [1.0, 1.0]
    assert float(first.SliceThickness) == 2.0 and float(first.SpacingBetweenSlices) == 2.0


def test_make_demo_series_pixels_sit_at_the_nifti_world_position(slices: list[pydicom.Dataset]) -> None:
    """A pixel's LPS position, taken to RAS and through the NIfTI affine, lands on the voxels it came from."""
    img = nib.load(str(CH2))
    data = np.asarray(img.dataobj, dtype=np.float32)
    to_voxel = np.linalg.inv(img.affine)
    rng = np.random.default_rng(0)
    for ds in (slices[0], slices[40], slices[-1]):
        x, y = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
        row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
        pixels = ds.pixel_array
        for r, c in zip(rng.integers(0, ds.Rows, 25), rng.integers(0, ds.Columns, 25), strict=True):
            lps = np.asarray(ds.ImagePositionPatient, float) + c * col_sp * x + r * row_sp * y
            ras = np.linalg.inv(RAS_TO_LPS) @ np.append(lps, 1.0)
            i, j, k = (to_voxel @ ras)[:3]
            assert abs(i - round(i)) < 1e-6 and abs(j - round(j)) < 1e-6 and abs(k - np.floor(k) - 0.5) < 1e-6
            expected = (data[round(i), round(j), int(np.floor(k))] + data[round(i), round(j), int(np.ceil(k))]) / 2
            assert pixels[r, c] == pytest.approx(expected * 16, abs=0.5)


def test_series_affine_rejects_unevenly_spaced_slices() -> None:
    positions = [[0, 0, 0], [0, 0, 1], [0, 0, 3], [0, 0, 4]]
    with pytest.raises(GeometryError, match="not evenly spaced"):
        series_affine(positions, [1, 0, 0, 0, 1, 0], [1, 1])


# -- volumes ----------------------------------------------------------------------------------------------


def test_structure_volumes_ml_box_with_known_spacing_is_exact() -> None:
    labels = np.zeros((10, 20, 30), dtype=np.uint8)
    labels[2:6, 3:8, 4:10] = 3  # 4 x 5 x 6 = 120 voxels
    labels[0, 0, 0] = 7
    theta = np.deg2rad(20)  # an oblique series: the voxel volume must not depend on the orientation
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.5, 0.8, 0.5])  # slice step 2.5 mm, rows 0.8 mm, columns 0.5 mm: 1 mm³
    affine[:3, 3] = [-100, 50, 20]
    vols = structure_volumes_ml(labels, affine, [3, 7, 9])
    assert vols[3] == pytest.approx(0.120, abs=1e-9)
    assert vols[7] == pytest.approx(0.001, abs=1e-9)
    assert vols[9] == 0.0


# -- the shipped bundle -----------------------------------------------------------------------------------


def test_shipped_bundle_is_a_small_demonstration_bundle_with_coded_segments() -> None:
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["demonstration"] is True and meta["version"]
    assert (BUNDLE / "models" / "model.ts").stat().st_size < 5_000_000
    assert "not for clinical use" in (BUNDLE / "docs" / "README.md").read_text().lower()
    codes = {s["name"]: s["code"]["code"] for s in meta["segments"]}
    assert codes == {s.name: s.code for s in train.STRUCTURES}
    assert codes["Left hippocampus"] == "5366008" and codes["Cerebellum"] == "113305005"
    assert set(meta["evaluation"]["dice_mean_held_out"]) == set(codes)
    assert yaml.safe_load((APP_DIR / "app.yaml").read_text())["application"]["version"] == __version__


# -- the app end to end -----------------------------------------------------------------------------------


def _atlas_on_series(slices: list[pydicom.Dataset]) -> np.ndarray:
    """The AAL-merged atlas labels resampled (partial volume) onto the series grid (frames, rows, columns)."""
    ordered = sorted(slices, key=lambda d: float(d.ImagePositionPatient[2]))
    affine = series_affine([d.ImagePositionPatient for d in ordered], ordered[0].ImageOrientationPatient,
                           ordered[0].PixelSpacing)
    aal = nib.load(str(TEMPLATES / "aal.nii.gz"))
    merged = train.merge_aal(np.asarray(aal.dataobj))
    shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    return resample_labels(merged, train.N_CLASSES, RAS_TO_LPS @ aal.affine, affine, shape)


def test_app_segments_demo_series_like_the_atlas(tmp_path: Path, series_dir: Path, slices: list[pydicom.Dataset],
                                                 dicomdir_study: list[Path]) -> None:
    """The app picks the MR volume out of a study that also holds CR/CT images and reproduces the atlas labels."""
    inputs = _link_inputs(tmp_path / "in", *sorted(series_dir.glob("*.dcm")), *dicomdir_study)
    run, out = _run_app(tmp_path, inputs, BUNDLE)
    assert run.returncode == 0, run.stderr[-3000:]
    result = AppResult.read(out)
    assert result.notice == DEMONSTRATION_NOTICE and result.model.demonstration
    assert result.inputs.series_instance_uid == SERIES_UID and result.inputs.study_instance_uid == STUDY_UID
    assert result.inputs.patient_id == "MRSEG-TEST"
    assert result.timing["inference_seconds"] > 0
    reference = json.loads((BUNDLE / "configs" / "drift_reference.json").read_text())
    assert set(result.monitoring) == set(reference["inputs"]) == {"intensity_mean", "intensity_std"}
    assert set(output_features(result.as_json())) == set(reference["outputs"])

    (seg,) = result.segmentations
    ordered = sorted(slices, key=lambda d: float(d.ImagePositionPatient[2]))
    assert seg.referenced_sop_instance_uids == [d.SOPInstanceUID for d in ordered]
    labels = np.load(out / seg.file)
    assert labels.dtype == np.uint8 and labels.shape == (len(slices), slices[0].Rows, slices[0].Columns)

    truth = _atlas_on_series(slices)
    voxel_ml = 2.0 * 1.0 * 1.0 / 1000
    by_number = {m.segment_number: m for m in result.measurements}
    assert sorted(by_number) == [s.number for s in seg.segments] == list(range(1, 12))
    for s in seg.segments:
        m = by_number[s.number]
        assert m.code.code == "118565006" and m.unit == "mL" and m.finding_site == s.code
        assert m.laterality == s.laterality
        side = {"Left": "7771000", "Right": "24028007"}.get(s.name.split()[0])
        assert (s.laterality.code if s.laterality else None) == side, s.name
        assert m.value == pytest.approx(np.count_nonzero(labels == s.number) * voxel_ml, abs=0.01)
        true_ml = np.count_nonzero(truth == s.number) * voxel_ml
        assert abs(m.value - true_ml) < VOLUME_TOLERANCE * true_ml, (s.name, m.value, true_ml)
        a, b = labels == s.number, truth == s.number
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice > (MIN_DICE_LARGE if s.number <= 3 else MIN_DICE_SMALL), (s.name, dice)


def test_app_missing_model_path_exits_nonzero_with_reason(tmp_path: Path, series_dir: Path) -> None:
    run, out = _run_app(tmp_path, series_dir, tmp_path / "no-such-bundle")
    assert run.returncode != 0
    assert "No such file/folder" in run.stderr and "no-such-bundle" in run.stderr  # the SDK's -m check
    assert not (out / "result.json").exists()


def test_app_folder_that_is_not_a_bundle_exits_nonzero_with_reason(tmp_path: Path, series_dir: Path) -> None:
    (tmp_path / "not-a-bundle" / "models").mkdir(parents=True)
    run, out = _run_app(tmp_path, series_dir, tmp_path / "not-a-bundle")
    assert run.returncode != 0
    assert "Exception occurred for operator: 'segmentation'" in run.stderr
    assert "no model file model.ts under" in run.stderr
    assert not (out / "result.json").exists()


def test_app_study_without_3d_mr_exits_nonzero_with_reason(tmp_path: Path, dicomdir_study: list[Path]) -> None:
    run, out = _run_app(tmp_path, _link_inputs(tmp_path / "in", *dicomdir_study), BUNDLE)
    assert run.returncode != 0
    assert "no 3-D MR series" in run.stderr and "CR series" in run.stderr
    assert not (out / "result.json").exists()


# -- training ---------------------------------------------------------------------------------------------


def test_train_quick_writes_a_loadable_bundle(tmp_path: Path) -> None:
    train.main(["--out", str(tmp_path / "bundle"), "--quick", "--seed", "3"])
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["training"]["quick"] is True and meta["evaluation"]["iterations"] == train.QUICK.iterations
    assert set(meta["evaluation"]["dice_unaugmented_atlas"]) == {s.name for s in train.STRUCTURES}
    segmenter = VolumeSegmenter(tmp_path / "bundle")
    net_out = segmenter.network(torch.zeros((1, 1, *train.QUICK.grid.shape)))
    assert tuple(net_out.shape) == (1, train.N_CLASSES, *train.QUICK.grid.shape)
    volume = np.zeros((12, 40, 40), dtype=np.float32)
    volume[3:9, 10:30, 10:30] = 100.0
    affine = np.diag([4.0, 3.0, 3.0, 1.0])
    out = segmenter.segment(SourceVolume(volume, affine, [f"1.2.3.{i}" for i in range(12)], "1.2.3", modality="MR"))
    assert out.labels.shape == volume.shape and out.labels.dtype == np.uint8
