"""The pure parts of the model registry: drift statistics, shadow comparisons, version choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interop.mlops.compare import compare_classifications, compare_findings, compare_label_maps, compare_results, dice
from interop.mlops.drift import case_features, drift_rows, psi
from interop.mlops.registry import agreement_rate, pick
from operators.drift_reference import build_reference, histogram, output_features, quantile_edges


def test_psi_is_zero_for_the_same_distribution_and_matches_the_formula() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    ref, live = [50, 50], [80, 20]
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(ref, live) == pytest.approx(expected)
    assert psi([10, 0], [5, 5]) == pytest.approx((0.5 - 1e-4) * math.log(0.5 / 1e-4) + (0.5 - 1) * math.log(0.5))
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([0, 0], [1, 1])


def test_histogram_bins_are_left_closed_with_open_ends() -> None:
    edges = [1.0, 2.0]
    assert histogram([0.5, 1.0, 1.5, 2.0, 9.0, float("nan")], edges) == [1, 2, 2]
    assert quantile_edges([float(i) for i in range(101)], 4) == [0.0, 25.0, 50.0, 75.0, pytest.approx(100.0001)]
    assert quantile_edges([3.0] * 10) == [3.0, pytest.approx(3.000003)]
    assert histogram([2.0, 3.0, 3.0, 4.0], quantile_edges([3.0] * 10)) == [1, 2, 1]  # below, at, above
    assert quantile_edges([]) == []


def test_drift_rows_shift_and_min_cases() -> None:
    rng = np.random.default_rng(0)
    ref_values = rng.normal(0.0, 1.0, 2000).tolist()
    reference = build_reference({"x": ref_values}, {"p": rng.uniform(0, 1, 2000).tolist()}, source="test")
    assert sum(reference["inputs"]["x"]["counts"]) == 2000 and len(reference["inputs"]["x"]["edges"]) == 11
    same = [{"inputs": {"x": v}, "outputs": {"p": p}} for v, p in
            zip(rng.normal(0.0, 1.0, 400), rng.uniform(0, 1, 400), strict=True)]
    shifted = [{"inputs": {"x": v + 1.5}, "outputs": {"p": p}} for v, p in
               zip(rng.normal(0.0, 1.0, 400), rng.uniform(0, 1, 400), strict=True)]
    by = {r["feature"]: r for r in drift_rows(reference, same, min_cases=20)}
    assert by["x"]["kind"] == "input" and by["p"]["kind"] == "output"
    assert by["x"]["psi"] < 0.1 and by["p"]["psi"] < 0.1 and by["x"]["n"] == 400
    moved = {r["feature"]: r for r in drift_rows(reference, shifted, min_cases=20)}
    assert moved["x"]["psi"] > 0.25 and moved["p"]["psi"] < 0.1
    assert moved["x"]["live_mean"] == pytest.approx(1.5, abs=0.2)
    few = {r["feature"]: r for r in drift_rows(reference, same[:5], min_cases=20)}
    assert few["x"]["psi"] is None and few["x"]["n"] == 5


def test_case_features_of_a_result() -> None:
    result = {"monitoring": {"intensity_mean": 0.4, "bad": float("inf")},
              "findings": [{"name": "effusion", "probability": 0.7}],
              "classifications": [{"name": "stage", "probabilities": {"1": 0.2, "2": 0.8}}],
              "measurements": [{"name": "Left hippocampus volume", "value": 3.1}]}
    f = case_features(result)
    assert f["inputs"] == {"intensity_mean": 0.4}
    assert f["outputs"] == {"effusion": 0.7, "stage:1": 0.2, "stage:2": 0.8, "Left hippocampus volume": 3.1}
    assert output_features({}) == {}


def _finding(name: str, p: float) -> dict[str, object]:
    return {"name": name, "probability": p, "present": p >= 0.5}


def test_findings_agree_on_calls_and_probability_distance() -> None:
    a = [_finding("x", 0.9), _finding("y", 0.1)]
    c = compare_findings(a, [_finding("x", 0.85), _finding("y", 0.15)], max_delta=0.1)
    assert c.agree is True and c.score == pytest.approx(0.05) and c.kind == "findings"
    assert compare_findings(a, [_finding("x", 0.45), _finding("y", 0.1)], max_delta=0.5).agree is False  # call flips
    assert compare_findings(a, [_finding("x", 0.6), _finding("y", 0.1)], max_delta=0.1).agree is False  # |dp| 0.3
    assert compare_findings(a, [_finding("x", 0.9)], max_delta=0.1).agree is False  # a finding missing


def test_classifications_agree_on_the_predicted_class() -> None:
    a = [{"name": "stage", "predicted": "3", "probabilities": {"3": 0.6, "4": 0.4}}]
    same = [{"name": "stage", "predicted": "3", "probabilities": {"3": 0.51, "4": 0.49}}]
    other = [{"name": "stage", "predicted": "4", "probabilities": {"3": 0.4, "4": 0.6}}]
    assert compare_classifications(a, same).agree is True
    c = compare_classifications(a, other)
    assert c.agree is False and c.score == 0.0 and c.detail["stage"]["shadow"] == "4"


def test_segmentations_agree_by_dice_per_label() -> None:
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)) == pytest.approx(2 / 3)
    a = np.zeros((2, 10, 10), np.uint8)
    a[:, :5, :5] = 1
    a[:, 5:, 5:] = 2
    b = a.copy()
    b[:, 0, :5] = 0  # label 1 loses a row: Dice 2*40/(50+40) = 0.889
    c = compare_label_maps(a, b, [1, 2, 3], min_dice=0.8)
    assert c.agree is True and c.detail["dice"] == {"1": pytest.approx(0.888889), "2": 1.0, "3": 1.0}
    assert compare_label_maps(a, b, [1, 2], min_dice=0.9).agree is False
    assert compare_label_maps(a, b[:1], [1], min_dice=0.1).agree is False  # shapes differ
    seg = {"segmentations": [{"file": "labels.npy", "segments": [{"number": 1}, {"number": 2}]}]}
    maps = {"active": a, "shadow": b}
    got = compare_results(seg, seg, max_delta=0.1, min_dice=0.8, load=lambda side, _f: maps[side])
    assert got.kind == "segmentation" and got.agree is True
    assert compare_results({}, {}, max_delta=0.1, min_dice=0.8).agree is None


def test_pick_rule_over_app_over_default() -> None:
    rows = [("", "active", "2.0"), ("chest", "active", "1.5"), ("", "shadow", "3.0"), ("chest", "shadow", "1.5")]
    assert pick(rows, "other", "1.0") == ("2.0", "3.0")
    assert pick(rows, "chest", "1.0") == ("1.5", None)  # the shadow equals the active version: no shadow
    assert pick([], "any", "1.0") == ("1.0", None)
    assert agreement_rate(3, 4) == 0.75 and agreement_rate(0, 0) is None
