"""The model versions installed for each app: found on disk, never in the database (the database only says
which of them is active or shadow, interop.mlops.registry).

Where versions come from, first found wins for a given (app, version):

1. the app's own bundle (``interop.model`` in its app.yaml, or ``jobs.models`` for a site's bundle): the
   *default* version, active unless another is activated;
2. ``[[models.installed]]`` entries of the configuration (``app``, ``path``);
3. ``<data_dir>/models/<app>/<folder>/`` (``interop models install APP BUNDLE`` copies a bundle there, into a
   folder named after its version).

A version is the ``version`` of the bundle's ``configs/metadata.json``. Every worker that runs jobs needs the
same bundles at the same paths (a shared volume or the same image).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interop.errors import Conflict, InvalidInput
from operators.drift_reference import REFERENCE_FILE
from operators.model_bundle import ModelBundleError, read_metadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    app: str
    version: str
    path: Path
    name: str
    demonstration: bool
    #: ``app`` (the app's own bundle or jobs.models), ``config`` (models.installed) or ``installed`` (data dir).
    source: str
    #: The bundle carries a drift reference (configs/drift_reference.json).
    has_reference: bool

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "path": str(self.path), "source": self.source,
                "demonstration": self.demonstration, "drift_reference": self.has_reference}


def read_version(app: str, path: Path, source: str) -> ModelVersion:
    """The version of the bundle at ``path``; :class:`ModelBundleError` when it can't be read."""
    meta = read_metadata(path)
    return ModelVersion(app=app, version=str(meta["version"]), path=path.absolute(),
                        name=str(meta.get("name") or path.name), demonstration=bool(meta.get("demonstration")),
                        source=source, has_reference=(path / REFERENCE_FILE).is_file())


def scan(defaults: dict[str, Path], entries: list[tuple[str, Path]],
         root: Path | None) -> dict[str, dict[str, ModelVersion]]:
    """Every readable version per app (see the module's order); unreadable bundles are logged and skipped."""
    found: dict[str, dict[str, ModelVersion]] = {app: {} for app in defaults}
    candidates: list[tuple[str, Path, str]] = [(app, p, "app") for app, p in defaults.items()]
    candidates += [(app, p, "config") for app, p in entries]
    if root is not None and root.is_dir():
        for app in sorted(defaults):
            folder = root / app
            if folder.is_dir():
                candidates += [(app, d, "installed") for d in sorted(folder.iterdir()) if d.is_dir()]
    for app, path, source in candidates:
        if app not in found:
            log.error("model bundle %s names app %s, which is not installed; ignored", path, app)
            continue
        try:
            mv = read_version(app, Path(path), source)
        except ModelBundleError as exc:
            if source != "app":  # the app's own unreadable bundle is reported by its jobs
                log.error("model bundle of %s not usable: %s", app, exc)
            continue
        first = found[app].get(mv.version)
        if first is not None:
            if first.path != mv.path:
                log.warning("%s model version %s at %s ignored: already found at %s", app, mv.version, mv.path,
                            first.path)
            continue
        found[app][mv.version] = mv
    return found


_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def install(root: Path, app: str, bundle: Path, known: dict[str, ModelVersion] | None = None) -> Path:
    """Copy ``bundle`` to ``<root>/<app>/<version>/`` (a temporary folder renamed into place); Conflict when
    that version is already there or among ``known`` (the app's versions found elsewhere: a second bundle
    of the same version would never be used)."""
    try:
        meta = read_metadata(bundle)
    except ModelBundleError as exc:
        raise InvalidInput(str(exc)) from None
    version = str(meta["version"])
    if known and version in known:
        raise Conflict(f"{app} model version {version} is already installed at {known[version].path}; give the "
                       f"new bundle a version of its own (configs/metadata.json)")
    dest = root / app / _SAFE.sub("_", version)
    if dest.exists():
        raise Conflict(f"{app} model version {version} is already installed at {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle, tmp)
    tmp.rename(dest)
    return dest
