"""Input and output drift of each model version against its training reference.

The reference is the bundle's ``configs/drift_reference.json`` (operators.drift_reference: decile bin edges
and reference counts per feature, written by the app's train script). The live distribution is each
version's most recent results (``models.drift_window``), binned on the same edges. The statistic is the
population stability index, PSI = Σ (live_i - ref_i) · ln(live_i / ref_i) over the bins' proportions (Siddiqi,
*Credit Risk Scorecards*, 2006; Yurdakul, 2018): 0 for the same distribution; by the usual rule of thumb
< 0.1 is no real shift, 0.1-0.25 a moderate one, > 0.25 a major one. Proportions are floored at 1e-4 so an
empty bin does not make it infinite.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select

from interop.config import ModelSettings
from interop.jobs.models import Job, JobResult
from interop.jobs.registry import AppRegistry
from interop.store.db import Database
from operators.drift_reference import histogram, output_features, read_reference

EPSILON = 1e-4


def psi(reference: Sequence[float], live: Sequence[float], eps: float = EPSILON) -> float:
    """Population stability index of two histograms over the same bins (counts or proportions)."""
    if len(reference) != len(live):
        raise ValueError("the histograms have different bins")
    rt, lt = float(sum(reference)), float(sum(live))
    if rt <= 0 or lt <= 0:
        raise ValueError("an empty histogram has no distribution")
    total = 0.0
    for r, v in zip(reference, live, strict=True):
        p, q = max(r / rt, eps), max(v / lt, eps)
        total += (q - p) * math.log(q / p)
    return total


def case_features(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """A result's features: ``inputs`` (the app's ``monitoring``) and ``outputs`` (probabilities, measurements)."""
    inputs = {str(k): float(v) for k, v in (result.get("monitoring") or {}).items()
              if isinstance(v, int | float) and math.isfinite(v)}
    return {"inputs": inputs, "outputs": output_features(result)}


def drift_rows(reference: Mapping[str, Any], cases: Iterable[Mapping[str, Mapping[str, float]]],
               min_cases: int) -> list[dict[str, Any]]:
    """One row per reference feature: kind (``input``/``output``), feature, n live values, PSI (None below
    ``min_cases`` values), reference and live means."""
    cases = list(cases)
    rows: list[dict[str, Any]] = []
    for kind, key in (("input", "inputs"), ("output", "outputs")):
        for feature, ref in sorted((reference.get(key) or {}).items()):
            values = [c[key][feature] for c in cases if feature in c.get(key, {})]
            value = None
            if len(values) >= min_cases and sum(ref.get("counts") or []) > 0:
                value = round(psi(ref["counts"], histogram(values, ref["edges"])), 6)
            rows.append({"kind": kind, "feature": feature, "n": len(values), "psi": value,
                         "reference_mean": ref.get("mean"),
                         "live_mean": round(sum(values) / len(values), 6) if values else None})
    return rows


class DriftMonitor:
    """Drift per (app, model version) from the stored results; recomputed at most every ``ttl`` seconds, so
    scrapes stay cheap and right whichever process stored the results."""

    def __init__(self, db: Database, apps: AppRegistry, settings: ModelSettings, ttl: float = 30.0) -> None:
        self.db = db
        self.apps = apps
        self.settings = settings
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cache: tuple[float, list[dict[str, Any]]] | None = None

    def _versions_seen(self) -> list[tuple[str, str]]:
        with self.db.reading() as s:
            return [(a, v) for a, v in s.execute(
                select(Job.app, JobResult.model_version).join(JobResult, JobResult.job_id == Job.id).distinct())]

    def _recent(self, app: str, version: str) -> list[dict[str, dict[str, float]]]:
        with self.db.reading() as s:
            contents = s.scalars(select(JobResult.content).join(Job, Job.id == JobResult.job_id)
                                 .where(Job.app == app, JobResult.model_version == version)
                                 .order_by(JobResult.id.desc()).limit(self.settings.drift_window)).all()
        return [case_features(json.loads(c)) for c in contents]

    def compute(self) -> list[dict[str, Any]]:
        """Rows ``{app, model_version, kind, feature, n, psi, reference_mean, live_mean}`` for every model
        version with results and a reference."""
        out: list[dict[str, Any]] = []
        for app, version in sorted(self._versions_seen()):
            if app not in self.apps.apps:
                continue
            try:
                path = self.apps.model_path(app, version)
            except Exception:
                continue  # no longer installed: nothing to compare with
            reference = read_reference(path)
            if reference is None:
                continue
            for row in drift_rows(reference, self._recent(app, version), self.settings.drift_min_cases):
                out.append({"app": app, "model_version": version, **row})
        return out

    def rows(self, app: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > self.ttl:
                self._cache = (now, self.compute())
            rows = self._cache[1]
        return [r for r in rows if app is None or r["app"] == app]

    def gauge(self, kind: str) -> list[tuple[tuple[str, ...], float]]:
        """(app, model_version, feature) -> PSI for the ``kind`` (input/output) features with a figure."""
        return [((r["app"], r["model_version"], r["feature"]), r["psi"]) for r in self.rows()
                if r["kind"] == kind and r["psi"] is not None]
