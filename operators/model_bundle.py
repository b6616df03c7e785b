"""A model as a MONAI Bundle directory, loaded by path so that a site can drop in its own.

Layout (MONAI Bundle specification, ``configs/metadata.json`` + ``models/``)::

    <bundle>/configs/metadata.json   name, version, task, intended_use, demonstration flag, labels ...
    <bundle>/models/model.ts         TorchScript (imaging apps)
    <bundle>/models/model.joblib     scikit-learn estimator (tabular apps)
    <bundle>/docs/README.md          the model card

``metadata.json`` keys we read beyond the Bundle specification's own: ``"demonstration": true`` marks a model
trained on demonstration data; every result it produces then carries :data:`DEMONSTRATION_NOTICE`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMONSTRATION_NOTICE = "demonstration model, not for clinical use"


class ModelBundleError(Exception):
    """The model directory is missing, incomplete or unreadable."""


@dataclass(frozen=True)
class ModelInfo:
    """What every result says about the model that produced it."""

    name: str
    version: str
    path: str
    sha256: str
    demonstration: bool
    notice: str | None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": self.path,
            "sha256": self.sha256,
            "demonstration": self.demonstration,
            "notice": self.notice,
        }


def read_metadata(bundle: str | Path) -> dict[str, Any]:
    """``configs/metadata.json`` of the bundle at ``bundle``; :class:`ModelBundleError` when absent or invalid."""
    path = Path(bundle) / "configs" / "metadata.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelBundleError(f"no model bundle at {Path(bundle)} (missing {path})") from None
    except (OSError, ValueError) as exc:
        raise ModelBundleError(f"unreadable model metadata {path}: {exc}") from None
    if not isinstance(data, dict) or not data.get("version"):
        raise ModelBundleError(f"{path} has no 'version'")
    return data


def model_file(bundle: str | Path, *names: str) -> Path:
    """The first of ``models/<name>`` that exists (e.g. ``model.ts``, ``model.joblib``)."""
    for name in names:
        candidate = Path(bundle) / "models" / name
        if candidate.is_file():
            return candidate
    raise ModelBundleError(f"no model file {' or '.join(names)} under {Path(bundle) / 'models'}")


def model_info(bundle: str | Path, weights: Path | None = None) -> ModelInfo:
    """The identity of the model in ``bundle`` (name, version, content hash of ``weights``)."""
    meta = read_metadata(bundle)
    digest = ""
    if weights is not None:
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    demo = bool(meta.get("demonstration", False))
    return ModelInfo(
        name=str(meta.get("name") or Path(bundle).name),
        version=str(meta["version"]),
        path=str(Path(bundle).absolute()),
        sha256=digest,
        demonstration=demo,
        notice=DEMONSTRATION_NOTICE if demo else None,
        metadata=meta,
    )
