"""Does a shadow run agree with the clinical run it shadowed? Pure functions on two results (AppResult JSON)
and, for segmentations, their label maps.

- findings (e.g. cxr_triage): the same findings present, and every probability within ``max_delta``;
  the score is the largest |Δp|;
- classifications (e.g. lab_severity): the same predicted class; the score is the share of classifications
  whose class is the same (1.0 or 0.0 for one classification);
- segmentations (e.g. mr_segmentation): every label's Dice coefficient (Dice 1945) at least ``min_dice`` (a
  label absent from both maps counts as 1.0); the score is the smallest Dice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    kind: str  # findings | classification | segmentation | incomplete
    agree: bool | None
    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)


def incomplete(reason: str) -> Comparison:
    return Comparison("incomplete", None, None, {"reason": reason})


def compare_findings(active: Sequence[Mapping[str, Any]], shadow: Sequence[Mapping[str, Any]],
                     max_delta: float) -> Comparison:
    a = {str(f["name"]): f for f in active}
    s = {str(f["name"]): f for f in shadow}
    detail: dict[str, Any] = {}
    agree = set(a) == set(s)
    worst = 0.0
    for name in sorted(set(a) | set(s)):
        if name not in a or name not in s:
            detail[name] = {"only_in": "active" if name in a else "shadow"}
            continue
        delta = abs(float(a[name]["probability"]) - float(s[name]["probability"]))
        same = bool(a[name]["present"]) == bool(s[name]["present"])
        worst = max(worst, delta)
        agree = agree and same and delta <= max_delta
        detail[name] = {"active": float(a[name]["probability"]), "shadow": float(s[name]["probability"]),
                        "delta": round(delta, 6), "same_call": same}
    return Comparison("findings", agree, round(worst, 6), detail)


def compare_classifications(active: Sequence[Mapping[str, Any]], shadow: Sequence[Mapping[str, Any]]) -> Comparison:
    a = {str(c["name"]): c for c in active}
    s = {str(c["name"]): c for c in shadow}
    names = sorted(set(a) | set(s))
    detail: dict[str, Any] = {}
    same = 0
    for name in names:
        if name not in a or name not in s:
            detail[name] = {"only_in": "active" if name in a else "shadow"}
            continue
        pa, ps = a[name].get("probabilities") or {}, s[name].get("probabilities") or {}
        delta = max((abs(float(pa.get(k, 0.0)) - float(ps.get(k, 0.0))) for k in set(pa) | set(ps)), default=0.0)
        equal = a[name]["predicted"] == s[name]["predicted"]
        same += equal
        detail[name] = {"active": a[name]["predicted"], "shadow": s[name]["predicted"],
                        "max_probability_delta": round(delta, 6)}
    score = same / len(names) if names else 1.0
    return Comparison("classification", same == len(names), round(score, 6), detail)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_label_maps(active: np.ndarray, shadow: np.ndarray, labels: Sequence[int], min_dice: float) -> Comparison:
    if active.shape != shadow.shape:
        return Comparison("segmentation", False, 0.0, {"shape": {"active": list(active.shape),
                                                                 "shadow": list(shadow.shape)}})
    per = {int(n): round(dice(active == n, shadow == n), 6) for n in labels}
    worst = min(per.values(), default=1.0)
    return Comparison("segmentation", worst >= min_dice, worst, {"dice": {str(k): v for k, v in per.items()}})


def compare_results(active: Mapping[str, Any], shadow: Mapping[str, Any], *, max_delta: float, min_dice: float,
                    load: Callable[[str, str], np.ndarray] | None = None) -> Comparison:
    """Compare two results of the same app; ``load(side, file)`` reads a label map (``side`` is ``active`` or
    ``shadow``)."""
    if active.get("segmentations") or shadow.get("segmentations"):
        sa, ss = active.get("segmentations") or [], shadow.get("segmentations") or []
        if len(sa) != len(ss) or load is None:
            return Comparison("segmentation", False, 0.0, {"segmentations": {"active": len(sa), "shadow": len(ss)}})
        worst: Comparison | None = None
        for one_a, one_s in zip(sa, ss, strict=True):
            labels = sorted({int(x["number"]) for x in [*one_a["segments"], *one_s["segments"]]})
            c = compare_label_maps(load("active", one_a["file"]), load("shadow", one_s["file"]), labels, min_dice)
            if worst is None or (c.score or 0.0) < (worst.score or 0.0):
                worst = c
        assert worst is not None
        return worst
    if active.get("classifications") or shadow.get("classifications"):
        return compare_classifications(active.get("classifications") or [], shadow.get("classifications") or [])
    if active.get("findings") or shadow.get("findings"):
        return compare_findings(active.get("findings") or [], shadow.get("findings") or [], max_delta)
    return incomplete("neither result has findings, classifications or segmentations to compare")
