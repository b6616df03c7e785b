"""An app's manifest, ``apps/<name>/app.yaml`` (MONAI Deploy's app.yaml plus our ``interop:`` section): one
reader for the apps (their name and version in every result) and the node's app registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from operators.app_result import AppRef


def read_manifest(app_dir: str | Path) -> dict[str, Any]:
    """``<app_dir>/app.yaml`` as a mapping; ValueError when it is not one."""
    path = Path(app_dir) / "app.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return data


def app_ref(app_dir: str | Path) -> AppRef:
    """The app's name (its folder) and version (``application.version``)."""
    data = read_manifest(app_dir)
    return AppRef(name=Path(app_dir).resolve().name, version=str((data.get("application") or {})["version"]))
