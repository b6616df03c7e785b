"""The structured result every app writes and the server reads: ``<output>/result.json`` plus ``.npy`` arrays.

This is the contract between an app (a MONAI Deploy operator graph run in a child process or on a worker) and
the node (``interop.jobs``), and later the write-back (SR/SEG/FHIR). Everything a report needs is here, in
the coordinates of the source data:

- ``findings``: present/absent decisions with the probability behind them and the threshold used; an optional
  heat-map (float32, rows x columns of the source image, values 0..1) per finding;
- ``classifications``: a multi-class prediction (e.g. a stage) with calibrated probabilities per class and
  per-feature contributions;
- ``measurements``: numbers with UCUM units (e.g. a structure's volume in mL);
- ``segmentations``: a label map (uint8, frames x rows x columns) whose frame *i* lies on
  ``referenced_sop_instance_uids[i]`` of the source series, with the meaning of each label.

Every result names the app, the model and its version; a demonstration model's results carry its notice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA = "interop.app-result/1"
RESULT_FILE = "result.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Coding(_Strict):
    """A coded concept (FHIR Coding / DICOM code sequence item)."""

    system: str  # e.g. "http://snomed.info/sct", "http://loinc.org", "http://radlex.org"
    code: str
    display: str


class Finding(_Strict):
    name: str  # machine name, e.g. "cardiomegaly"
    code: Coding
    probability: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    present: bool
    #: Array file (in the output folder) of the heat-map explaining this finding, or None.
    heatmap: str | None = None
    #: The SOP Instance UID of the image the finding (and its heat-map) refers to.
    sop_instance_uid: str | None = None

    @model_validator(mode="after")
    def _present_matches(self) -> Finding:
        if self.present != (self.probability >= self.threshold):
            raise ValueError(f"finding {self.name}: present must equal probability >= threshold")
        return self


class Contribution(_Strict):
    feature: str
    value: float | str | None  # the input value (None when it was missing and imputed)
    contribution: float  # signed effect on the predicted class's log-odds


class Classification(_Strict):
    name: str  # e.g. "pbc_histologic_stage"
    code: Coding  # what is being classified
    predicted: str  # the class label with the highest probability
    probabilities: dict[str, float]
    contributions: list[Contribution] = Field(default_factory=list)

    @model_validator(mode="after")
    def _predicted_is_argmax(self) -> Classification:
        if self.predicted not in self.probabilities:
            raise ValueError(f"classification {self.name}: predicted class not among the probabilities")
        if abs(sum(self.probabilities.values()) - 1.0) > 1e-3:
            raise ValueError(f"classification {self.name}: probabilities do not sum to 1")
        return self


class Measurement(_Strict):
    name: str  # e.g. "Left hippocampus volume"
    code: Coding  # the quantity, e.g. SNOMED 118565006 Volume
    value: float
    unit: str  # UCUM, e.g. "mL", "mm", "1"
    finding_site: Coding | None = None  # the structure measured
    #: Left / right / bilateral of the finding site (SNOMED CT 7771000 / 24028007 / 51440002), if paired.
    laterality: Coding | None = None
    segment_number: int | None = None  # the segment it was measured on, if any


class Segment(_Strict):
    number: int = Field(ge=1, le=255)
    name: str
    code: Coding  # the anatomic structure (SNOMED CT)
    laterality: Coding | None = None  # for a paired structure (DICOM SEG: Anatomic Region Modifier)


class Segmentation(_Strict):
    file: str  # uint8 label map, frames x rows x columns, 0 = background
    segments: list[Segment]
    series_instance_uid: str
    referenced_sop_instance_uids: list[str]


class ModelRef(_Strict):
    name: str
    version: str
    path: str
    sha256: str
    demonstration: bool
    notice: str | None


class AppRef(_Strict):
    name: str
    version: str


class Inputs(_Strict):
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uids: list[str] = Field(default_factory=list)
    patient_id: str | None = None
    #: FHIR version-specific references of the Observations read (e.g. ``Observation/12/_history/1``).
    observations: list[str] = Field(default_factory=list)


class AppResult(_Strict):
    schema_: Literal["interop.app-result/1"] = Field("interop.app-result/1", alias="schema")
    app: AppRef
    model: ModelRef
    #: "demonstration model, not for clinical use" for demonstration models; None for a site's own model.
    notice: str | None
    inputs: Inputs
    findings: list[Finding] = Field(default_factory=list)
    classifications: list[Classification] = Field(default_factory=list)
    measurements: list[Measurement] = Field(default_factory=list)
    segmentations: list[Segmentation] = Field(default_factory=list)
    #: A one-line human-readable summary of the result (never the final report).
    summary: str = ""
    timing: dict[str, float] = Field(default_factory=dict)  # e.g. {"inference_seconds": 0.4}
    #: Summary features of the input as the model saw it, for drift monitoring (operators.drift_reference):
    #: e.g. {"intensity_mean": 0.41, "intensity_std": 0.2}; scalars only, never an identifier.
    monitoring: dict[str, float] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def array_files(self) -> list[str]:
        files = [f.heatmap for f in self.findings if f.heatmap]
        files += [s.file for s in self.segmentations]
        return files

    # -- files ------------------------------------------------------------------------------------------

    def write(self, folder: str | Path, arrays: dict[str, np.ndarray] | None = None) -> Path:
        """Write ``result.json`` and each array (``name -> array``, saved as ``name``) into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        arrays = arrays or {}
        missing = set(self.array_files()) - set(arrays)
        if missing:
            raise ValueError(f"result refers to arrays that were not given: {sorted(missing)}")
        for name, arr in arrays.items():
            if "/" in name or not name.endswith(".npy"):
                raise ValueError(f"array name must be a plain file name ending .npy: {name!r}")
            np.save(out / name, arr, allow_pickle=False)
        path = out / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(by_alias=True, indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: str | Path) -> AppResult:
        """Read and validate ``result.json`` in ``folder``; each array it names must be there."""
        path = Path(folder) / RESULT_FILE
        result = cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        for name in result.array_files():
            if "/" in name or not (Path(folder) / name).is_file():
                raise ValueError(f"result.json names array {name!r}, which is not in {folder}")
        return result

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
