"""The drift reference of a model bundle (``configs/drift_reference.json``) and the per-case features it is
made of, computed the same way by the train scripts (on training-time data) and by the apps (on each input).

A case's features are scalars: *inputs* (what the app put in ``AppResult.monitoring``: e.g. the mean and spread
of the image intensities the network saw, or each lab value in its canonical unit) and *outputs* (derived from
the result: each finding's probability, each class's probability, each measurement). The reference keeps, per
feature, fixed bin edges (deciles of the reference values) and the reference counts in those bins; the node
bins live values on the same edges and compares (interop.mlops.drift).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_FILE = "configs/drift_reference.json"
SCHEMA = "interop.drift-reference/1"


def image_features(image: np.ndarray) -> dict[str, float]:
    """Input features of an image as the network sees it (after preprocessing): mean and standard deviation."""
    arr = np.asarray(image, dtype=np.float64)
    return {"intensity_mean": round(float(arr.mean()), 6), "intensity_std": round(float(arr.std()), 6)}


def output_features(result: Mapping[str, Any]) -> dict[str, float]:
    """Output features of a result (``AppResult`` JSON): ``<finding>`` -> probability, ``<classification>:<class>``
    -> probability, ``<measurement name>`` -> value."""
    out: dict[str, float] = {}
    for f in result.get("findings") or []:
        out[str(f["name"])] = float(f["probability"])
    for c in result.get("classifications") or []:
        for cls, p in (c.get("probabilities") or {}).items():
            out[f"{c['name']}:{cls}"] = float(p)
    for m in result.get("measurements") or []:
        out[str(m["name"])] = float(m["value"])
    return out


def quantile_edges(values: Sequence[float], bins: int = 10) -> list[float]:
    """Bin edges: the reference's minimum, its interior quantiles (deciles by default) and just above its
    maximum, duplicates removed; so values below or above anything the reference saw fall in bins of their own
    (empty in the reference), and a constant feature still has a bin for its one value."""
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return []
    lo, hi = float(arr.min()), float(arr.max())
    qs = np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1]).tolist()
    return sorted({lo, *(float(q) for q in qs), hi + max(1e-6, abs(hi) * 1e-6)})


def histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts of ``values`` in the ``len(edges) + 1`` bins ``(-inf, e0), [e0, e1), ..., [e_last, inf)``."""
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), arr, side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(int).tolist()


def summarize(values: Sequence[float], bins: int = 10) -> dict[str, Any]:
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    edges = quantile_edges(arr.tolist(), bins)
    return {"n": int(arr.size), "mean": round(float(arr.mean()), 6) if arr.size else None,
            "std": round(float(arr.std()), 6) if arr.size else None, "edges": edges,
            "counts": histogram(arr.tolist(), edges)}


def build_reference(inputs: Mapping[str, Sequence[float]], outputs: Mapping[str, Sequence[float]], *, source: str,
                    bins: int = 10) -> dict[str, Any]:
    """The reference document: per input and output feature, its decile edges and the reference counts."""
    return {"schema": SCHEMA, "source": source,
            "inputs": {k: summarize(v, bins) for k, v in sorted(inputs.items())},
            "outputs": {k: summarize(v, bins) for k, v in sorted(outputs.items())}}


def cases_to_columns(cases: Iterable[Mapping[str, float]]) -> dict[str, list[float]]:
    """Per-case feature dicts -> one list of values per feature."""
    cols: dict[str, list[float]] = {}
    for case in cases:
        for k, v in case.items():
            if v is not None:
                cols.setdefault(k, []).append(float(v))
    return cols


def write_reference(bundle: str | Path, reference: Mapping[str, Any]) -> Path:
    path = Path(bundle) / REFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reference, indent=1) + "\n", encoding="utf-8")
    return path


def read_reference(bundle: str | Path) -> dict[str, Any] | None:
    """The bundle's reference, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(bundle) / REFERENCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None
