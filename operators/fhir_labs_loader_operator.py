"""FhirLabsLoaderOperator: a FHIR R4 ``collection`` Bundle of one Patient and Observations -> model features.

The model bundle says which features it needs and how each is coded (``configs/metadata.json``,
``input_features``: LOINC/SNOMED codings, the canonical UCUM unit and explicit conversion factors, the numeric
value of coded findings). This module is the generic reading of those specs, so a site that drops in its own
bundle with its own feature list changes data, not code.

Rules (FHIR R4 4.0.1, Observation §8.1 and its ``status`` value set ``observation-status``):

- an Observation counts when its ``code.coding`` has one of the feature's codings and its status is ``final``,
  ``amended``, ``corrected`` or ``preliminary``; ``cancelled``, ``entered-in-error``, ``registered`` and
  ``unknown`` ones are ignored, as are ones without a value (e.g. only a ``dataAbsentReason``);
- per feature the latest one wins: the greatest effective time (``effectiveDateTime`` / ``effectiveInstant`` /
  ``effectivePeriod.start``, else ``issued``); at the same time a final/amended/corrected result beats a
  preliminary one, then the higher ``meta.versionId``;
- a quantity is read in its UCUM unit (``valueQuantity.code``, else ``.unit``) and converted to the feature's
  canonical unit with the factor listed in the spec; a unit the spec does not list is an error, never a guess;
- a finding (``valueBoolean`` or ``valueCodeableConcept``) maps to the number the spec lists for it; an unlisted
  coded value is an error;
- age is the Patient's ``birthDate`` to the latest used Observation's date, in years (365.25 days); sex is
  ``Patient.gender`` mapped by the spec; a feature that is not found is ``None`` (the model imputes it), unless
  the spec marks it required, which is an error naming the feature and its codes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.model_bundle import ModelBundleError, read_metadata

log = logging.getLogger(__name__)

LABS_FILE = "labs.json"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

#: Observation statuses whose value may be used, best first (FHIR R4 value set ``observation-status``).
_STATUS_RANK = {"final": 2, "amended": 2, "corrected": 2, "preliminary": 1}

Source = Literal["observation", "patient.age", "patient.gender"]


class LabInputError(ValueError):
    """The lab input cannot be turned into model features (missing, malformed, unknown unit or value)."""


@dataclass(frozen=True)
class FeatureSpec:
    """How one model input is found in FHIR and put into the model's unit (an item of ``input_features``)."""

    name: str
    display: str
    source: Source = "observation"
    #: ``(system, code)`` pairs that mean this feature (e.g. LOINC 1975-2 mg/dL and 14631-6 umol/L bilirubin).
    codes: tuple[tuple[str, str], ...] = ()
    #: The canonical UCUM unit of the model input ("1" for findings and sex, "a" for age).
    unit: str = "1"
    #: UCUM unit -> factor that multiplies a value in that unit into :attr:`unit`.
    conversions: Mapping[str, float] = field(default_factory=dict)
    #: For findings and sex: ``"true"``/``"false"``, ``"<system>|<code>"`` or a gender code -> model number.
    values: Mapping[str, float] = field(default_factory=dict)
    required: bool = False

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> FeatureSpec:
        """Read one ``input_features`` entry of a bundle's ``metadata.json``."""
        try:
            return cls(
                name=str(item["name"]),
                display=str(item.get("display", item["name"])),
                source=item.get("source", "observation"),
                codes=tuple((str(c["system"]), str(c["code"])) for c in item.get("codes", [])),
                unit=str(item.get("unit", "1")),
                conversions={str(k): float(v) for k, v in item.get("conversions", {}).items()},
                values={str(k): float(v) for k, v in item.get("values", {}).items()},
                required=bool(item.get("required", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelBundleError(f"invalid input_features entry {item!r}: {exc}") from None

    def codes_text(self) -> str:
        return ", ".join(f"{'LOINC' if s == LOINC else 'SNOMED' if s == SNOMED else s} {c}" for s, c in self.codes)


def specs_from_metadata(metadata: Mapping[str, Any]) -> list[FeatureSpec]:
    """The model's input features, in the model's column order, from its ``metadata.json``."""
    items = metadata.get("input_features")
    if not isinstance(items, list) or not items:
        raise ModelBundleError("model metadata has no 'input_features' list (the lab features the model reads)")
    return [FeatureSpec.from_json(item) for item in items]


@dataclass(frozen=True)
class LabFeatures:
    """The model inputs read from one patient's Bundle, and what they were read from."""

    #: feature name -> value in the spec's unit, or None when not found (the model imputes it); spec order.
    values: dict[str, float | None]
    patient_id: str | None
    #: Version-specific references (``Observation/<id>/_history/<versionId>``) of the Observations used.
    observations: list[str]
    #: The latest effective time among the Observations used (age is computed at this date).
    as_of: datetime | None = None


@dataclass(frozen=True)
class _Candidate:
    when: datetime
    rank: int
    version: int
    resource: Mapping[str, Any]

    def sort_key(self) -> tuple[datetime, int, int, str]:
        return (self.when, self.rank, self.version, str(self.resource.get("id", "")))


# -- pure reading ---------------------------------------------------------------------------------------------


def parse_fhir_datetime(text: str) -> datetime:
    """A FHIR ``date``/``dateTime``/``instant`` (R4 §2.24.0.1) as an aware datetime; partial dates start the period."""
    value = text.strip()
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise LabInputError(f"not a FHIR date/dateTime: {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def observation_reference(obs: Mapping[str, Any]) -> str:
    """``Observation/<id>/_history/<versionId>`` (FHIR R4 §2.3.0, version-specific reference)."""
    rid = obs.get("id")
    if not rid:
        raise LabInputError("an Observation in the Bundle has no id")
    version = (obs.get("meta") or {}).get("versionId")
    return f"Observation/{rid}/_history/{version}" if version else f"Observation/{rid}"


def _effective(obs: Mapping[str, Any]) -> datetime:
    text = obs.get("effectiveDateTime") or obs.get("effectiveInstant")
    text = text or (obs.get("effectivePeriod") or {}).get("start") or obs.get("issued")
    if not text:
        raise LabInputError(f"{observation_reference(obs)} has no effective time (effective[x] or issued)")
    return parse_fhir_datetime(str(text))


def _version(obs: Mapping[str, Any]) -> int:
    try:
        return int((obs.get("meta") or {}).get("versionId", 0))
    except (TypeError, ValueError):
        return 0


def _has_value(obs: Mapping[str, Any]) -> bool:
    return any(k in obs for k in ("valueQuantity", "valueBoolean", "valueCodeableConcept"))


def _codings(concept: Mapping[str, Any] | None) -> Iterable[tuple[str, str]]:
    for coding in (concept or {}).get("coding", []) or []:
        if coding.get("system") and coding.get("code"):
            yield str(coding["system"]), str(coding["code"])


def quantity_value(spec: FeatureSpec, obs: Mapping[str, Any]) -> float:
    """``valueQuantity`` in the spec's canonical unit; :class:`LabInputError` for a unit the spec does not list."""
    ref = observation_reference(obs)
    quantity = obs.get("valueQuantity")
    if not isinstance(quantity, Mapping) or quantity.get("value") is None:
        raise LabInputError(f"{ref} ({spec.display}) has no valueQuantity.value")
    system = quantity.get("system")
    if system and system != UCUM:
        raise LabInputError(f"{ref} ({spec.display}): unit system {system!r} is not UCUM ({UCUM})")
    unit = quantity.get("code") or quantity.get("unit")
    if unit not in spec.conversions:
        raise LabInputError(
            f"{ref} ({spec.display}): unit {unit!r} is not one this model accepts "
            f"({', '.join(sorted(spec.conversions))}); refusing to guess a conversion"
        )
    return float(quantity["value"]) * spec.conversions[str(unit)]


def finding_value(spec: FeatureSpec, obs: Mapping[str, Any]) -> float:
    """``valueBoolean`` / ``valueCodeableConcept`` mapped by the spec's ``values``; unknown values are an error."""
    ref = observation_reference(obs)
    if isinstance(obs.get("valueBoolean"), bool):
        key = "true" if obs["valueBoolean"] else "false"
        if key in spec.values:
            return spec.values[key]
    elif "valueCodeableConcept" in obs:
        for system, code in _codings(obs["valueCodeableConcept"]):
            key = f"{system}|{code}"
            if key in spec.values:
                return spec.values[key]
    raise LabInputError(
        f"{ref} ({spec.display}): value is not one this model accepts "
        f"(valueBoolean or a coded value among {', '.join(sorted(spec.values))})"
    )


def _patient(bundle: Mapping[str, Any]) -> Mapping[str, Any] | None:
    patients = [e.get("resource") for e in bundle.get("entry", []) or []]
    patients = [p for p in patients if isinstance(p, Mapping) and p.get("resourceType") == "Patient"]
    if len(patients) > 1:
        raise LabInputError(f"the Bundle holds {len(patients)} Patients; one patient per input")
    return patients[0] if patients else None


def _select(spec: FeatureSpec, observations: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    wanted = set(spec.codes)
    candidates = [
        _Candidate(_effective(o), _STATUS_RANK[o.get("status", "")], _version(o), o)
        for o in observations
        if o.get("status") in _STATUS_RANK and _has_value(o) and wanted.intersection(_codings(o.get("code")))
    ]
    return max(candidates, key=_Candidate.sort_key).resource if candidates else None


def _age_years(patient: Mapping[str, Any] | None, as_of: datetime | None) -> float | None:
    birth = (patient or {}).get("birthDate")
    if not birth or as_of is None:
        return None
    born = parse_fhir_datetime(str(birth))
    return (as_of - born).total_seconds() / 86400.0 / 365.25


def features_from_bundle(bundle: Mapping[str, Any], specs: Sequence[FeatureSpec]) -> LabFeatures:
    """Read the features ``specs`` describes from a FHIR R4 Bundle (one Patient, its Observations)."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise LabInputError("labs input is not a FHIR Bundle")
    patient = _patient(bundle)
    patient_id = str(patient["id"]) if patient and patient.get("id") else None
    observations = [
        e["resource"]
        for e in bundle.get("entry", []) or []
        if isinstance(e.get("resource"), Mapping) and e["resource"].get("resourceType") == "Observation"
    ]
    if patient_id:
        for obs in observations:
            subject = (obs.get("subject") or {}).get("reference")
            if subject and subject != f"Patient/{patient_id}":
                raise LabInputError(f"{observation_reference(obs)} is about {subject}, not Patient/{patient_id}")

    values: dict[str, float | None] = {}
    used: list[Mapping[str, Any]] = []
    for spec in specs:
        if spec.source != "observation":
            continue
        obs = _select(spec, observations)
        if obs is None:
            values[spec.name] = None
            continue
        values[spec.name] = quantity_value(spec, obs) if spec.conversions else finding_value(spec, obs)
        used.append(obs)
    as_of = max((_effective(o) for o in used), default=None)
    for spec in specs:
        if spec.source == "patient.age":
            values[spec.name] = _age_years(patient, as_of)
        elif spec.source == "patient.gender":
            gender = (patient or {}).get("gender")
            values[spec.name] = spec.values.get(str(gender)) if gender else None

    missing = [s for s in specs if s.required and values.get(s.name) is None]
    if missing:
        names = "; ".join(f"{s.display} ({s.codes_text() or s.source})" for s in missing)
        raise LabInputError(f"required input missing from the labs: {names}")
    return LabFeatures(
        values={s.name: values.get(s.name) for s in specs},
        patient_id=patient_id,
        observations=sorted({observation_reference(o) for o in used}),
        as_of=as_of,
    )


def read_labs(input_path: str | Path) -> dict[str, Any]:
    """The Bundle in ``<input>/labs.json`` (or ``input`` itself when it is a file)."""
    path = Path(input_path)
    if path.is_dir():
        path = path / LABS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabInputError(f"no {LABS_FILE} at {path}") from None
    except (OSError, ValueError) as exc:
        raise LabInputError(f"unreadable labs file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LabInputError(f"{path} is not a JSON object")
    return data


# -- operator -------------------------------------------------------------------------------------------------


class FhirLabsLoaderOperator(Operator):
    """Reads ``labs.json`` from the input folder and emits the model's features.

    The features and their codes come from the model bundle's ``metadata.json`` (``input_features``).

    Named outputs:
        features: :class:`LabFeatures`.
    """

    def __init__(
        self, fragment: Fragment, *args: object, input_folder: Path, model_path: Path, **kwargs: object
    ) -> None:
        self.input_folder = Path(input_folder)
        self.model_path = Path(model_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("features")

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        op_output.emit(self.load(), "features")

    def load(self) -> LabFeatures:
        specs = specs_from_metadata(read_metadata(self.model_path))
        features = features_from_bundle(read_labs(self.input_folder), specs)
        log.info("read %d observations for patient %s", len(features.observations), features.patient_id)
        return features
