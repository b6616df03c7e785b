"""Train the demonstration brain-structure segmentation model of ``mr_segmentation`` and write its MONAI Bundle.

``python -m apps.mr_segmentation.train --out DIR [--seed 0] [--quick]``

Data: one subject, the Colin27 T1 average (``ch2.nii.gz``; Holmes et al., J Comput Assist Tomogr 1998) with
the AAL parcellation drawn on it (``aal.nii.gz``; Tzourio-Mazoyer et al., NeuroImage 2002), as shipped by the
Debian package ``mricron-data``. AAL labels are merged into the eleven structures of :data:`STRUCTURES`.

Training data is that single subject under random spatial and intensity transformations applied jointly to
image and labels with MONAI transforms (random affine + elastic deformation, bias field, gamma, intensity
scale/shift, Gaussian noise, simulated low resolution and anisotropic blur), in the spirit of
data-augmentation-only atlas training (cf. SynthSeg, Billot et al., Med Image Anal 2023, which goes further and
synthesises intensities). Network: MONAI 3-D UNet (Ronneberger et al. 2015 / Kerfoot et al. 2018 residual
units), Dice + cross-entropy loss (Milletari et al. 2016; the CE term as in nnU-Net, Isensee et al. 2021), on a
80³ grid of 2.4 mm (:class:`~operators.volume_geometry.WorkingGrid`). Evaluation: per-structure Dice on
held-out augmented volumes drawn from a separate random stream (never seen in training) and on the
un-augmented atlas. Everything is seeded; torch runs single-threaded.

The bundle written to ``--out``: ``models/model.ts`` (TorchScript), ``configs/metadata.json`` (labels and their
SNOMED CT codes, working grid, intensity normalisation, the evaluation numbers of this run) and
``docs/README.md`` (the model card).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch

from operators.drift_reference import build_reference, cases_to_columns, image_features, write_reference
from operators.feedback import evaluate_feedback, feedback_card
from operators.volume_geometry import (
    RAS_TO_LPS,
    WorkingGrid,
    foreground_center,
    normalize_intensity,
    resample_image,
    resample_labels,
)

TEMPLATES = Path("/usr/share/mricron/templates")
SNOMED = "http://snomed.info/sct"
LEFT = {"system": SNOMED, "code": "7771000", "display": "Left"}
RIGHT = {"system": SNOMED, "code": "24028007", "display": "Right"}

# AAL label numbers (aal.nii.txt) of the cortical regions, i.e. 1..90 less the subcortical grey nuclei
# (caudate 71/72, putamen 73/74, pallidum 75/76, thalamus 77/78), hippocampus (37/38) and amygdala (41/42).
_NOT_CORTEX = {37, 38, 41, 42, 71, 72, 73, 74, 75, 76, 77, 78}
_CORTEX_L = [n for n in range(1, 91, 2) if n not in _NOT_CORTEX]
_CORTEX_R = [n for n in range(2, 91, 2) if n not in _NOT_CORTEX]


@dataclass(frozen=True)
class Structure:
    """One output label: its segment number, name, SNOMED CT anatomy code (DICOM PS3.16 CID 7140/7151
    code meanings), laterality modifier, and the AAL labels merged into it."""

    number: int
    name: str
    code: str
    display: str
    laterality: dict[str, str] | None
    aal_labels: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "name": self.name,
            "code": {"system": SNOMED, "code": self.code, "display": self.display},
            "laterality": self.laterality,
            "aal_labels": list(self.aal_labels),
        }


STRUCTURES: tuple[Structure, ...] = (
    Structure(1, "Left cerebral cortex", "40146001", "Cerebral cortex", LEFT, tuple(_CORTEX_L)),
    Structure(2, "Right cerebral cortex", "40146001", "Cerebral cortex", RIGHT, tuple(_CORTEX_R)),
    Structure(3, "Cerebellum", "113305005", "Cerebellum", None, tuple(range(91, 117))),
    Structure(4, "Left thalamus", "42695009", "Thalamus", LEFT, (77,)),
    Structure(5, "Right thalamus", "42695009", "Thalamus", RIGHT, (78,)),
    Structure(6, "Left caudate nucleus", "11000004", "Caudate nucleus", LEFT, (71,)),
    Structure(7, "Right caudate nucleus", "11000004", "Caudate nucleus", RIGHT, (72,)),
    Structure(8, "Left putamen", "89278009", "Putamen", LEFT, (73,)),
    Structure(9, "Right putamen", "89278009", "Putamen", RIGHT, (74,)),
    Structure(10, "Left hippocampus", "5366008", "Hippocampus", LEFT, (37,)),
    Structure(11, "Right hippocampus", "5366008", "Hippocampus", RIGHT, (38,)),
)
N_CLASSES = len(STRUCTURES) + 1

LOWER_PERCENTILE, UPPER_PERCENTILE = 0.5, 99.5
NORMALIZATION = {"method": "percentiles to 0..1 on the working grid", "lower_percentile": LOWER_PERCENTILE,
                 "upper_percentile": UPPER_PERCENTILE}
FOREGROUND_FRACTION = 0.2


@dataclass(frozen=True)
class Config:
    """Training settings; :data:`FULL` makes the shipped model, :data:`QUICK` is the seconds-long smoke run."""

    grid: WorkingGrid
    margin: int  # extra voxels each side of the augmentation source box
    channels: tuple[int, ...]
    iterations: int
    learning_rate: float
    eval_volumes: int
    p_brain_extracted: float  # share of samples drawn from the skull-stripped ch2bet instead of ch2


FULL = Config(WorkingGrid(80, 2.4), 12, (16, 32, 64, 128), 900, 3e-3, 8, 0.15)
QUICK = Config(WorkingGrid(32, 6.0), 4, (4, 8, 16), 3, 3e-3, 1, 0.15)


def merge_aal(aal: np.ndarray, structures: Sequence[Structure] = STRUCTURES) -> np.ndarray:
    """The AAL label map merged into ``structures`` (uint8; 0 where an AAL label belongs to none)."""
    lut = np.zeros(256, dtype=np.uint8)
    for s in structures:
        lut[list(s.aal_labels)] = s.number
    return lut[np.asarray(aal, dtype=np.uint8)]


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file's voxels (float32) and its RAS affine."""
    img = cast(nib.Nifti1Image, nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=float)


@dataclass
class Atlas:
    """The atlas subject on the augmentation source box (working spacing, ``size + 2 margin`` voxels)."""

    image: np.ndarray  # ch2, float32
    brain: np.ndarray  # ch2bet, float32
    labels: np.ndarray  # merged structures, uint8
    affine: np.ndarray  # LPS affine of the box


def load_atlas(cfg: Config, templates: Path = TEMPLATES) -> Atlas:
    """Read ch2/ch2bet/aal and resample them to the box the augmentations crop the working grid from."""
    image, ras_affine = read_nifti(templates / "ch2.nii.gz")
    affine = RAS_TO_LPS @ ras_affine
    brain = read_nifti(templates / "ch2bet.nii.gz")[0]
    labels = merge_aal(read_nifti(templates / "aal.nii.gz")[0])
    center = foreground_center(image, affine, FOREGROUND_FRACTION)
    size = cfg.grid.size + 2 * cfg.margin
    box = cfg.grid.affine(center, size)
    shape = (size, size, size)
    return Atlas(
        image=resample_image(image, affine, box, shape),
        brain=resample_image(brain, affine, box, shape),
        labels=resample_labels(labels, N_CLASSES, affine, box, shape),
        affine=box,
    )


def augmentation(cfg: Config) -> Any:
    """The joint image/label augmentation (MONAI dictionary transforms) ending in the app's normalisation."""
    from monai import transforms as T

    size = cfg.grid.shape
    keys = ["image", "label"]
    return T.Compose([
        # One resampling for random affine (±12°, ±12 % scale, ±6 voxels ≈ 14 mm shift) and elastic deformation.
        T.Rand3DElasticd(keys, sigma_range=(5.0, 8.0), magnitude_range=(40.0, 120.0), spatial_size=size,
                         prob=1.0, rotate_range=(0.21, 0.21, 0.21), scale_range=(0.12, 0.12, 0.12),
                         translate_range=(6, 6, 6), mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.ScaleIntensityd("image", minv=0.0, maxv=1.0),
        T.RandBiasFieldd("image", degree=3, coeff_range=(0.0, 0.3), prob=0.5),
        T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.5),
        T.RandSimulateLowResolutiond("image", zoom_range=(0.5, 0.9), prob=0.2),
        T.RandGaussianSmoothd("image", sigma_x=(0.0, 1.2), sigma_y=(0.0, 1.2), sigma_z=(0.0, 1.2), prob=0.2),
        T.RandScaleIntensityd("image", factors=0.3, prob=0.5),
        T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        T.RandGaussianNoised("image", std=0.03, prob=0.5),
        T.Lambdad("image", lambda x: torch.as_tensor(normalize_intensity(np.asarray(x), LOWER_PERCENTILE,
                                                                         UPPER_PERCENTILE))),
        T.EnsureTyped(keys, data_type="tensor", dtype=(torch.float32, torch.long), track_meta=False),
    ])


class Sampler:
    """Seeded stream of augmented ``(image, label)`` pairs, each ``(1, N, N, N)``."""

    def __init__(self, atlas: Atlas, cfg: Config, seed: int) -> None:
        self.atlas = atlas
        self.cfg = cfg
        self.rng = np.random.RandomState(seed)
        self.transform = augmentation(cfg)
        self.transform.set_random_state(seed=seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        source = self.atlas.brain if self.rng.rand() < self.cfg.p_brain_extracted else self.atlas.image
        sample = self.transform({"image": source[None].copy(), "label": self.atlas.labels[None].astype(np.float32)})
        return sample["image"], sample["label"]


def build_network(cfg: Config) -> torch.nn.Module:
    from monai.networks.nets import UNet

    strides = (2,) * (len(cfg.channels) - 1)
    return UNet(spatial_dims=3, in_channels=1, out_channels=N_CLASSES, channels=cfg.channels, strides=strides,
                num_res_units=1, norm="instance")


def dice_per_structure(pred: np.ndarray, truth: np.ndarray, numbers: Sequence[int]) -> dict[int, float]:
    """Dice coefficient (2|A∩B| / (|A|+|B|); Dice 1945) of each label number; 1.0 when both are empty."""
    out = {}
    for n in numbers:
        a, b = pred == n, truth == n
        denom = int(a.sum()) + int(b.sum())
        out[n] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom
    return out


def predict(net: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.argmax(net(image[None]), dim=1)[0].numpy().astype(np.uint8)


def evaluate(net: torch.nn.Module, atlas: Atlas, cfg: Config, seed: int) -> dict[str, Any]:
    """Per-structure Dice on ``cfg.eval_volumes`` held-out augmented volumes and on the un-augmented atlas."""
    net.eval()
    sampler = Sampler(atlas, cfg, seed)
    numbers = [s.number for s in STRUCTURES]
    scores: dict[int, list[float]] = {n: [] for n in numbers}
    for _ in range(cfg.eval_volumes):
        image, label = sampler()
        for n, d in dice_per_structure(predict(net, image), label[0].numpy(), numbers).items():
            scores[n].append(d)
    m = cfg.margin
    crop = (slice(m, m + cfg.grid.size),) * 3
    clean = torch.as_tensor(normalize_intensity(atlas.image[crop], LOWER_PERCENTILE, UPPER_PERCENTILE))[None]
    clean_dice = dice_per_structure(predict(net, clean), atlas.labels[crop], numbers)
    names = {s.number: s.name for s in STRUCTURES}
    return {
        "held_out_augmented_volumes": cfg.eval_volumes,
        "held_out_seed": seed,
        "dice_mean_held_out": {names[n]: round(float(np.mean(v)), 3) for n, v in scores.items()},
        "dice_min_held_out": {names[n]: round(float(np.min(v)), 3) for n, v in scores.items()},
        "dice_unaugmented_atlas": {names[n]: round(d, 3) for n, d in clean_dice.items()},
    }


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks instead of unmapping them (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = 1 GiB).

    Each iteration allocates and frees tens of MB of tensors; by default glibc returns them to the kernel and
    page-faults them back, which cost ~30 % of the run's CPU time as system time. Numerics are unchanged.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)
        libc.mallopt(-1, 1 << 30)
    except (OSError, AttributeError):
        pass


def train(cfg: Config, seed: int, log_every: int = 50) -> tuple[torch.nn.Module, Atlas, dict[str, Any]]:
    """Train the network on the augmented atlas; returns it, the atlas box and the run's figures."""
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    torch.set_num_threads(1)
    keep_freed_memory()
    set_determinism(seed=seed)
    started = time.perf_counter()
    atlas = load_atlas(cfg)
    sampler = Sampler(atlas, cfg, seed)
    net = build_network(cfg)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=cfg.iterations, power=0.9)
    losses = []
    net.train()
    for it in range(1, cfg.iterations + 1):
        image, label = sampler()
        opt.zero_grad()
        loss = loss_fn(net(image[None]), label[None])
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if it % log_every == 0 or it == cfg.iterations:
            print(f"iter {it}/{cfg.iterations} loss {np.mean(losses[-log_every:]):.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(net, atlas, cfg, seed + 10_000)
    metrics.update({"iterations": cfg.iterations, "final_loss": round(float(np.mean(losses[-50:])), 4),
                    "train_seconds": round(train_seconds, 1),
                    "total_seconds": round(time.perf_counter() - started, 1)})
    return net, atlas, metrics


def export_torchscript(net: torch.nn.Module, cfg: Config, path: Path) -> None:
    net.eval()
    example = torch.zeros((1, 1, *cfg.grid.shape))
    with torch.no_grad():
        module = torch.jit.trace(net, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.save(str(path))


def metadata(cfg: Config, seed: int, metrics: dict[str, Any], quick: bool) -> dict[str, Any]:
    import monai

    channel_def = {"0": "background"} | {str(s.number): s.name for s in STRUCTURES}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20240725.json",
        "name": "mr_brain_structures_demo" + ("_quick" if quick else ""),
        "version": "0.1.0",
        "changelog": {"0.1.0": "first demonstration model: Colin27 + AAL, augmentation-only training"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": nib.__version__},
        "task": "Segmentation of eleven brain structures on T1-weighted MR",
        "description": "3-D UNet segmenting cerebral cortex (left/right), cerebellum, thalamus, caudate, putamen "
                       "and hippocampus (left/right) on a T1-weighted MR volume; trained on a single atlas subject "
                       "(Colin27 + AAL) with augmentation. Demonstration model, not for clinical use.",
        "authors": "imaging-AI node demonstration",
        "copyright": "demonstration; data: Colin27 (MNI) and AAL (GIN-IMN), via Debian mricron-data",
        "data_source": "Colin27 T1 average (ch2.nii.gz, ch2bet.nii.gz) and AAL atlas (aal.nii.gz), mricron-data",
        "data_type": "nifti",
        "intended_use": "Demonstration of the node's segmentation workflow only; not for clinical use.",
        "demonstration": True,
        "input_modalities": ["MR"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": list(cfg.grid.shape), "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {"0": "T1-weighted MR"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": N_CLASSES,
                                 "spatial_shape": list(cfg.grid.shape), "dtype": "float32",
                                 "value_range": [], "is_patch_data": False, "channel_def": channel_def}},
        },
        "working_grid": {"size": cfg.grid.size, "spacing_mm": cfg.grid.spacing_mm,
                         "axes": "+R, +A, +S (RAS voxel order)",
                         "center": "world centroid of voxels above foreground_fraction x the 99th percentile",
                         "foreground_fraction": FOREGROUND_FRACTION},
        "intensity_normalization": NORMALIZATION,
        "segments": [s.as_dict() for s in STRUCTURES],
        "training": {"seed": seed, "quick": quick, "iterations": cfg.iterations, "channels": list(cfg.channels),
                     "learning_rate": cfg.learning_rate, "loss": "DiceCE (Dice without background + CE)",
                     "optimizer": "AdamW, polynomial decay", "threads": 1, "machine": platform.machine()},
        "evaluation": metrics,
    }


def model_card(meta: dict[str, Any]) -> str:
    ev = meta["evaluation"]
    rows = "\n".join(
        f"| {s['number']} | {s['name']} | {s['code']['code']} {s['code']['display']}"
        f"{' + ' + s['laterality']['display'] if s['laterality'] else ''} | "
        f"{ev['dice_mean_held_out'][s['name']]:.3f} | {ev['dice_min_held_out'][s['name']]:.3f} | "
        f"{ev['dice_unaugmented_atlas'][s['name']]:.3f} |"
        for s in meta["segments"])
    grid = meta["working_grid"]
    return f"""# {meta['name']} {meta['version']}: brain structures on T1 MR (demonstration model)

**Demonstration model, not for clinical use.** It was trained on one atlas subject and has never seen a patient.

## What it does
A MONAI 3-D UNet ({meta['training']['channels']} channels, residual units, instance norm) that labels eleven
structures on a T1-weighted MR volume resampled to a {grid['size']}³ grid of {grid['spacing_mm']} mm (axes
+R, +A, +S, centred on the head's intensity centroid). Input intensities are mapped so that the 0.5th and
99.5th percentiles of the working grid become 0 and 1. The app (`apps/mr_segmentation`) resamples the
class probabilities back to the source series' grid and reports each structure's volume.

## Training data
One subject: the Colin27 T1 average (`ch2.nii.gz`, 1 mm; Holmes et al. 1998), 15 % of samples from its
brain-extracted version (`ch2bet.nii.gz`), with the AAL parcellation (`aal.nii.gz`; Tzourio-Mazoyer et al. 2002)
merged into the structures below (Debian package `mricron-data`). "Cerebral cortex" is the AAL cortical
labels 1–90 less hippocampus, amygdala and the deep grey nuclei; "Cerebellum" is AAL 91–116 (lobules and vermis).
Every training sample is that subject under a random affine (±12°, ±12 % scale, ±14 mm shift) and elastic
deformation applied jointly to image and labels, then a random bias field, gamma, intensity scale/shift,
noise, simulated low resolution and anisotropic blur (MONAI transforms), seed {meta['training']['seed']},
{meta['training']['iterations']} iterations of batch 1, DiceCE loss, AdamW, one CPU thread
({ev['train_seconds']} s wall-clock for data preparation and training, on a 2-core machine shared with other jobs).

## Evaluation (numbers from the training run)
Dice on {ev['held_out_augmented_volumes']} held-out augmented volumes (a random stream never used in training;
mean and minimum) and on the un-augmented atlas:

| # | structure | SNOMED CT (+ laterality) | Dice mean | Dice min | Dice atlas |
|---|---|---|---|---|---|
{rows}

These numbers measure how well the network undoes augmentations of the subject it was trained on. They say
nothing about other people's brains.

## Limitations
- Single training subject: anatomy, contrast and atlas-label conventions of Colin27/AAL only; expect poor
  results on other subjects, on pathology (tumour, atrophy, hydrocephalus), on children and on non-T1 contrasts.
- AAL is a macroscopic parcellation drawn on this one brain; "cortex" includes some adjacent white matter.
- The {grid['spacing_mm']} mm working grid limits small structures (hippocampus, caudate): their volumes carry
  partial-volume error of several percent.
- No registration: the head must be roughly upright (within ~12° of the atlas) and inside a
  {grid['size'] * grid['spacing_mm']:.0f} mm cube around its intensity centroid.
- CT is not supported (the app selects MR series only).

## Files
`models/model.ts` TorchScript (input 1×1×{grid['size']}³ float32, output 1×{N_CLASSES}×{grid['size']}³ logits),
`configs/metadata.json` (labels, codes, grid, normalisation, these metrics). Reproduce with
`python -m apps.mr_segmentation.train --out DIR --seed {meta['training']['seed']}`.
"""


def write_bundle(out: Path, net: torch.nn.Module, cfg: Config, seed: int, metrics: dict[str, Any],
                 quick: bool, feedback: Path | None = None) -> Path:
    """With ``feedback`` (a sign-off feedback export) the physicians' verdicts on the deployed model are
    summarised in the metadata (``site_feedback``); the export has no images, so they are not training data."""
    export_torchscript(net, cfg, out / "models" / "model.ts")
    meta = metadata(cfg, seed, metrics, quick)
    if feedback is not None:
        meta["site_feedback"] = evaluate_feedback(feedback, "mr_segmentation")
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    (out / "docs").mkdir(parents=True, exist_ok=True)
    (out / "docs" / "README.md").write_text(model_card(meta) + feedback_card(meta), encoding="utf-8")
    return out


#: Seed offset of the augmented volumes the drift reference is drawn from (evaluation uses + 10 000).
REFERENCE_SEED_OFFSET = 20_000


def reference_volumes(cfg: Config) -> int:
    return 2 if cfg is QUICK else 16


def drift_reference(net: torch.nn.Module, atlas: Atlas, cfg: Config, seed: int, n: int) -> dict[str, Any]:
    """The bundle's drift reference (operators.drift_reference): ``n`` augmented atlas volumes from their own
    seeded stream; inputs are the network input's intensity mean and spread (after the app's normalisation),
    outputs each structure's volume in mL as segmented on the working grid."""
    sampler = Sampler(atlas, cfg, seed)
    voxel_ml = cfg.grid.spacing_mm ** 3 / 1000.0
    inputs, outputs = [], []
    for _ in range(n):
        image, _label = sampler()
        labels = predict(net, image)
        inputs.append(image_features(image.numpy()))
        counts = np.bincount(labels.ravel(), minlength=N_CLASSES)
        outputs.append({f"{s.name} volume": float(counts[s.number]) * voxel_ml for s in STRUCTURES})
    return build_reference(cases_to_columns(inputs), cases_to_columns(outputs),
                           source=f"{n} augmented Colin27/AAL volumes (seed {seed}) through the shipped network")


def write_drift_reference(bundle: Path) -> Path:
    """Write the drift reference of an existing bundle with its own weights (no training)."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    training = meta.get("training") or {}
    cfg = QUICK if training.get("quick") else FULL
    torch.set_num_threads(1)
    net = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu").eval()
    seed = int(training.get("seed", 0)) + REFERENCE_SEED_OFFSET
    return write_reference(bundle, drift_reference(net, load_atlas(cfg), cfg, seed, reference_volumes(cfg)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds), not a usable model")
    parser.add_argument("--reference-only", action="store_true",
                        help="only write configs/drift_reference.json of the bundle at --out from its own weights")
    parser.add_argument("--feedback", type=Path, help="sign-off feedback export (CSV or JSON of /api/feedback): "
                        "summarised as an evaluation, see apps/README.md")
    args = parser.parse_args(argv)
    if args.reference_only:
        print(write_drift_reference(args.out))
        return
    cfg = QUICK if args.quick else FULL
    net, atlas, metrics = train(cfg, args.seed)
    write_bundle(args.out, net, cfg, args.seed, metrics, args.quick, args.feedback)
    write_reference(args.out, drift_reference(net.eval(), atlas, cfg, args.seed + REFERENCE_SEED_OFFSET,
                                              reference_volumes(cfg)))
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
