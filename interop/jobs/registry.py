"""The apps this node can run: each folder with an ``app.yaml`` (MONAI Deploy's app manifest plus our
``interop:`` section) under the bundled ``apps/`` package and the configured ``jobs.apps_dirs``.

``interop:`` section keys: ``module`` (run as ``python -m <module> -i IN -o OUT -m MODEL``), ``model`` (the
default model bundle, relative to the app folder; ``jobs.models`` replaces it per site), ``input`` (``dicom``
or ``labs``), ``timeout_seconds``, for lab apps ``labs`` (the LOINC codes it needs), and ``critical`` (finding
name -> the probability at which a present finding is critical).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interop.errors import InvalidInput, NotFound
from operators.app_manifest import read_manifest
from operators.model_bundle import ModelBundleError, read_metadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppSpec:
    name: str
    version: str
    folder: Path
    module: str
    model_path: Path
    input: str  # "dicom" | "labs"
    timeout_seconds: float | None
    labs: tuple[str, ...] = ()
    #: Finding name -> probability at or above which a present finding is critical (stat sign-off and a
    #: notification); ``reports.critical`` in the settings overrides it per site.
    critical: dict[str, float] = field(default_factory=dict)
    #: The directory to put on PYTHONPATH so that ``module`` imports (the parent of the apps package).
    python_path: Path = field(default=Path("."))

    def model_version(self) -> str:
        """The model bundle's version, or ``unavailable`` when the bundle can't be read (the run then fails
        with the reason, visible on the job)."""
        try:
            return str(read_metadata(self.model_path)["version"])
        except ModelBundleError as exc:
            log.warning("app %s: %s", self.name, exc)
            return "unavailable"

    def idempotency_key(self, model_version: str, inputs: dict[str, Any], shadow: bool = False) -> str:
        """sha256 of app, model version and the exact input (sorted UIDs / Observation versions); a shadow
        run's key differs from the clinical run's of the same version (that version may be activated later)."""
        doc: dict[str, Any] = {"app": self.name, "model": model_version,
                               "inputs": {k: sorted(v) if isinstance(v, list) else v for k, v in inputs.items()}}
        if shadow:
            doc["shadow"] = True
        canon = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "module": self.module, "input": self.input,
                "model_path": str(self.model_path), "model_version": self.model_version(),
                "timeout_seconds": self.timeout_seconds, "labs": list(self.labs), "critical": self.critical}


def _bundled_apps_dir() -> Path:
    import apps

    return Path(apps.__file__).parent


def load_app(folder: Path, models: dict[str, Path], python_path: Path) -> AppSpec:
    manifest = read_manifest(folder)
    app = manifest.get("application") or {}
    ours = manifest.get("interop") or {}
    name = folder.name
    if "module" not in ours or ours.get("input") not in ("dicom", "labs"):
        raise ValueError(f"{folder / 'app.yaml'}: 'interop:' needs 'module' and 'input' (dicom or labs)")
    model = models.get(name) or (folder / str(ours.get("model", "model")))
    return AppSpec(
        name=name,
        version=str(app.get("version", "0")),
        folder=folder,
        module=str(ours["module"]),
        model_path=Path(model).absolute(),
        input=str(ours["input"]),
        timeout_seconds=float(ours["timeout_seconds"]) if ours.get("timeout_seconds") else None,
        labs=tuple(str(c) for c in ours.get("labs") or ()),
        critical={str(k): float(v) for k, v in (ours.get("critical") or {}).items()},
        python_path=python_path,
    )


class AppRegistry:
    def __init__(self, apps_dirs: list[Path] | None = None, models: dict[str, Path] | None = None, *,
                 installed: list[tuple[str, Path]] | None = None, models_root: Path | None = None) -> None:
        """``installed`` (``models.installed``) and ``models_root`` (``<data_dir>/models``): more versions of the
        apps' models besides each app's own bundle (interop.mlops.catalog)."""
        self.installed = list(installed or [])
        self.models_root = models_root
        self._versions: dict[str, dict[str, Any]] | None = None
        self.apps: dict[str, AppSpec] = {}
        bundled = _bundled_apps_dir()
        roots = [(bundled, bundled.parent)] + [(Path(d), Path(d)) for d in apps_dirs or []]
        for root, python_path in roots:
            for manifest in sorted(root.glob("*/app.yaml")):
                try:
                    spec = load_app(manifest.parent, dict(models or {}), python_path)
                except (OSError, ValueError, yaml.YAMLError) as exc:
                    log.error("app at %s not loaded: %s", manifest.parent, exc)
                    continue
                self.apps[spec.name] = spec
        unknown = set(models or {}) - set(self.apps)
        if unknown:
            raise ValueError(f"jobs.models names unknown app(s): {', '.join(sorted(unknown))}")

    def get(self, name: str) -> AppSpec:
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"no app named {name!r} (known: {', '.join(sorted(self.apps)) or 'none'})") from None

    # -- model versions (interop.mlops.catalog) -------------------------------------------------------------

    def refresh(self) -> None:
        """Look for installed model versions again (after ``interop models install``)."""
        self._versions = None

    def versions(self, app: str) -> dict[str, Any]:
        """Version -> :class:`interop.mlops.catalog.ModelVersion` of ``app``'s installed models."""
        from interop.mlops.catalog import scan

        self.get(app)
        if self._versions is None:
            self._versions = scan({n: s.model_path for n, s in self.apps.items()}, self.installed,
                                  self.models_root)
        return self._versions.get(app, {})

    def model_path(self, app: str, version: str) -> Path:
        """The bundle of ``app``'s model ``version``. The app's own bundle is used when it is that version, or
        when it can't be read and no installed version matches (the run then fails saying why)."""
        spec = self.get(app)
        own = spec.model_version()
        if own == version:
            return spec.model_path
        mv = self.versions(app).get(version)
        if mv is None:
            self.refresh()  # installed since the last look?
            mv = self.versions(app).get(version)
        if mv is not None:
            return Path(mv.path)
        if own == "unavailable":
            return spec.model_path
        raise NotFound(f"{app} model version {version} is not installed here (installed: "
                       f"{', '.join(sorted(self.versions(app))) or 'none'})")

    def check_rule_apps(self, app_names: list[str]) -> None:
        missing = sorted({a for a in app_names if a not in self.apps})
        if missing:
            raise InvalidInput(f"routing rule names unknown app(s): {', '.join(missing)}")
