"""The sign-off feedback export feeding the train scripts: read in both export formats, scored against the
deployed model's output, and written into the bundle the script makes; each script also writes the drift
reference the node compares live inputs and outputs with."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from apps.cxr_triage import train as cxr_train
from apps.lab_severity import train as lab_train
from interop.reports.service import SignOffs
from operators.drift_reference import SCHEMA, read_reference
from operators.feedback import evaluate_feedback, finding_agreement, read_feedback, verdicts


def _row(signoff: int, app: str, action: str, kind: str, name: str, ai: object, physician: object,
         probability: float | None = None) -> dict[str, object]:
    row: dict[str, object] = {c: None for c in SignOffs.FEEDBACK_COLUMNS}
    agrees = None if physician is None else physician == ai
    row.update(signoff_id=signoff, report_id=signoff, job_id=signoff, app=app, model_name="m", model_version="0.1.0",
               demonstration=True, action=action, kind=kind, name=name, ai_value=ai, physician_value=physician,
               ai_probability=probability, agrees=agrees, sequence=1)
    return row


ROWS = [
    _row(1, "cxr_triage", "accept", "finding", "effusion", True, True, 0.9),
    _row(1, "cxr_triage", "accept", "finding", "edema", False, False, 0.1),
    _row(2, "cxr_triage", "amend", "finding", "effusion", True, False, 0.6),  # the physician said absent
    _row(2, "cxr_triage", "amend", "finding", "edema", False, True, 0.3),  # ... and edema present
    _row(3, "cxr_triage", "reject", "finding", "effusion", True, None, 0.7),  # rejected: no physician value
    _row(4, "lab_severity", "accept", "classification", "pbc_histologic_stage", "3", "3", 0.6),
    _row(5, "lab_severity", "reject", "classification", "pbc_histologic_stage", "4", None, 0.5),
]


def export(path: Path, fmt: str) -> Path:
    """The file as GET /api/feedback writes it (same columns; CSV empties for None)."""
    if fmt == "json":
        path.write_text(json.dumps(ROWS))
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(SignOffs.FEEDBACK_COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in ROWS:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
        path.write_text(buf.getvalue())
    return path


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_feedback_is_read_and_scored_the_same_from_either_format(tmp_path: Path, fmt: str) -> None:
    rows = read_feedback(export(tmp_path / f"fb.{fmt}", fmt), "cxr_triage")
    assert len(rows) == 5 and rows[0]["ai_value"] is True and rows[0]["ai_probability"] == 0.9
    assert rows[4]["physician_value"] is None
    scored = finding_agreement(rows)
    assert scored["effusion"] == {"n": 2, "tp": 1, "fp": 1, "tn": 0, "fn": 0, "sensitivity": 1.0,
                                  "specificity": 0.0, "agreement": 0.5}
    assert scored["edema"]["fn"] == 1 and scored["edema"]["tn"] == 1 and scored["edema"]["sensitivity"] == 0.0
    assert verdicts(rows)["verdicts"] == 3 and verdicts(rows)["reject"] == 1
    lab = read_feedback(tmp_path / f"fb.{fmt}", "lab_severity")
    assert [r["ai_value"] for r in lab] == ["3", "4"] and verdicts(lab)["accepted_unchanged_rate"] == 0.5


def test_cxr_train_reads_the_feedback_into_its_bundle_and_writes_a_drift_reference(tmp_path: Path) -> None:
    fb = export(tmp_path / "feedback.csv", "csv")
    assert cxr_train.main(["--out", str(tmp_path / "with"), "--quick", "--feedback", str(fb)]) == 0
    meta = json.loads((tmp_path / "with" / "configs" / "metadata.json").read_text())
    assert meta["site_feedback"] == evaluate_feedback(fb, "cxr_triage")
    assert meta["site_feedback"]["findings"]["effusion"]["n"] == 2 and meta["site_feedback"]["verdicts"] == 3
    card = (tmp_path / "with" / "docs" / "README.md").read_text()
    assert "Site feedback (evaluation only)" in card and "not for clinical use" in card
    reference = read_reference(tmp_path / "with")
    assert reference is not None and reference["schema"] == SCHEMA
    assert set(reference["outputs"]) == set(cxr_train.FINDINGS)
    assert reference["inputs"]["intensity_mean"]["n"] == cxr_train.QUICK["reference"]
    # The same run without feedback: everything else alike, no site_feedback.
    assert cxr_train.main(["--out", str(tmp_path / "without"), "--quick"]) == 0
    plain = json.loads((tmp_path / "without" / "configs" / "metadata.json").read_text())
    assert "site_feedback" not in plain and plain["findings"] == meta["findings"]
    assert read_reference(tmp_path / "without") == reference


def test_lab_train_with_feedback_keeps_the_model_and_adds_the_evaluation(tmp_path: Path) -> None:
    fb = export(tmp_path / "feedback.json", "json")
    assert lab_train.main(["--out", str(tmp_path / "b"), "--feedback", str(fb)]) == 0
    meta = json.loads((tmp_path / "b" / "configs" / "metadata.json").read_text())
    assert meta["site_feedback"]["verdicts"] == 2 and meta["site_feedback"]["reject"] == 1
    assert meta["site_feedback"]["by_model_version"] == {"0.1.0": {"accept": 1, "amend": 0, "reject": 1}}
    shipped = Path(lab_train.__file__).parent / "model"
    model = "models/model.joblib"
    assert (tmp_path / "b" / model).read_bytes() == (shipped / model).read_bytes()  # feedback is not training data
    assert read_reference(tmp_path / "b") == read_reference(shipped)  # the shipped reference is this script's


def test_reference_only_rewrites_the_shipped_reference_identically(tmp_path: Path) -> None:
    import shutil

    shipped = Path(lab_train.__file__).parent / "model"
    shutil.copytree(shipped, tmp_path / "copy")
    (tmp_path / "copy" / "configs" / "drift_reference.json").unlink()
    assert lab_train.main(["--out", str(tmp_path / "copy"), "--reference-only"]) == 0
    assert read_reference(tmp_path / "copy") == read_reference(shipped)
