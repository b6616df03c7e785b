"""VolumeSeriesSelectorOperator: the SDK's series selector, restricted to series that form a 3-D volume.

The SDK's :class:`~monai.deploy.operators.DICOMSeriesSelectorOperator` matches series on attributes (here the
modality) but cannot tell a 3-D stack of slices from a single radiograph or a scout. This subclass keeps the
SDK's rule matching (``Modality`` regex, all matches, largest first) and then keeps only series of at least
``min_slices`` single-frame images that share one Image Orientation Patient, Pixel Spacing and matrix, each
with an Image Position Patient (DICOM PS3.3 C.7.6.2). It emits the largest such series and fails with a clear
message (listing what the study does hold) when there is none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from monai.deploy.core import Fragment
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

log = logging.getLogger(__name__)


class NoVolumeSeriesError(ValueError):
    """The input holds no series usable as a 3-D volume of the wanted modalities."""


def modality_rules(modalities: Sequence[str]) -> str:
    """SDK selection rules (JSON) matching any of ``modalities`` exactly."""
    pattern = "(?i)^(" + "|".join(modalities) + ")$"
    return json.dumps({"selections": [{"name": "3-D " + "/".join(modalities),
                                       "conditions": {"Modality": pattern}}]})


def volume_problem(series: DICOMSeries, min_slices: int) -> str | None:
    """Why ``series`` is not a stack of parallel single-frame slices, or None when it is."""
    sops = series.get_sop_instances()
    if len(sops) < min_slices:
        return f"{len(sops)} image(s), fewer than {min_slices}"
    orientations, spacings, shapes = set(), set(), set()
    for sop in sops:
        ds = sop.get_native_sop_instance()
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return "multi-frame images (not supported)"
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            return "images without Image Position/Orientation (Patient) or Pixel Spacing"
        orientations.add(tuple(np.round(np.asarray(ds.ImageOrientationPatient, dtype=float), 4)))
        spacings.add(tuple(np.round(np.asarray(ds.PixelSpacing, dtype=float), 4)))
        shapes.add((int(ds.Rows), int(ds.Columns)))
    if len(orientations) > 1 or len(spacings) > 1 or len(shapes) > 1:
        return "images of differing orientation, pixel spacing or size"
    return None


def describe_studies(studies: Iterable[DICOMStudy]) -> str:
    """A short list of the series found, e.g. ``CR series 1.2.3 (1 image)``."""
    parts = [f"{s.Modality or '?'} series {s.SeriesInstanceUID} ({len(s.get_sop_instances())} image(s))"
             for study in studies for s in study.get_all_series()]
    return "; ".join(parts) or "no series"


def pick_volume_series(selected: list[StudySelectedSeries], min_slices: int) -> StudySelectedSeries | None:
    """The first selected series (the SDK sorts them largest first) that forms a 3-D volume."""
    for study_selected in selected:
        for chosen in study_selected.selected_series:
            problem = volume_problem(chosen.series, min_slices)
            if problem is None:
                out = StudySelectedSeries(study_selected.study)
                out.add_selected_series(SelectedSeries(chosen.selection_name, chosen.series, None))
                return out
            log.info("series %s not used: %s", chosen.series.SeriesInstanceUID, problem)
    return None


class VolumeSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """Selects the largest 3-D series of the given modalities; raises :class:`NoVolumeSeriesError` when none.

    Named input:
        dicom_study_list: list of DICOMStudy (from DICOMDataLoaderOperator).
    Named output:
        study_selected_series_list: a one-element list of StudySelectedSeries holding the chosen series.
    """

    def __init__(self, fragment: Fragment, *args: Any, modalities: Sequence[str] = ("MR",), min_slices: int = 8,
                 **kwargs: Any) -> None:
        self.modalities = tuple(modalities)
        self.min_slices = min_slices
        super().__init__(fragment, *args, rules=modality_rules(self.modalities), all_matched=True,
                         sort_by_sop_instance_count=True, **kwargs)

    def filter(self, selection_rules: Any, dicom_study_list: Any, all_matched: bool = False,
               sort_by_sop_instance_count: bool = False) -> list[StudySelectedSeries]:
        selected = super().filter(selection_rules, dicom_study_list, all_matched, sort_by_sop_instance_count)
        chosen = pick_volume_series(selected, self.min_slices)
        if chosen is None:
            raise NoVolumeSeriesError(
                f"no 3-D {'/'.join(self.modalities)} series (at least {self.min_slices} parallel slices) among the "
                f"inputs; found: {describe_studies(dicom_study_list or [])}")
        return [chosen]
