"""CxrImageLoaderOperator: the frontal CR/DX image among the selected series, with its pixels decoded."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import ConditionType, Operator, OperatorSpec
from pydicom.dataset import Dataset

from operators.radiograph import LATERAL_VIEWS, SourceImage, decode_pixels, is_image

log = logging.getLogger(__name__)

#: Modalities of projection radiographs (PS3.3 C.7.3.1.1.1): Computed Radiography, Digital Radiography.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})

#: Rules for the SDK's DICOMSeriesSelectorOperator that keep CR and DX series.
SELECTION_RULES = '{"selections": [{"name": "chest radiograph", "conditions": {"Modality": "(?i)^(CR|DX)$"}}]}'


class NoRadiographError(ValueError):
    """No frontal CR/DX image among the inputs."""


class CxrImageLoaderOperator(Operator):
    """Picks the frontal chest radiograph among the selected series and decodes its pixel data.

    The SDK's DICOMDataLoaderOperator and DICOMSeriesSelectorOperator find the CR/DX series; their
    DICOMSeriesToVolumeOperator is not used: it builds a 3-D volume from slice positions and knows nothing of
    MONOCHROME1, the VOI LUT or the view position that a single projection radiograph needs.

    Named input:
        study_selected_series_list: ``list[StudySelectedSeries]`` from DICOMSeriesSelectorOperator.

    Named output:
        image: a :class:`operators.radiograph.SourceImage` (the dataset and its decoded stored values).
    """

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list").condition(ConditionType.MESSAGE_AVAILABLE)
        spec.output("image")

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        selected = op_input.receive("study_selected_series_list")
        op_output.emit(self.load(instances_of(selected)), "image")

    def load(self, instances: Iterable[Dataset]) -> SourceImage:
        """The first frontal CR/DX image of ``instances``, decoded; :class:`NoRadiographError` if there is none."""
        started = time.perf_counter()
        dataset = choose_frontal_image(instances)
        pixels = decode_pixels(dataset)
        seconds = time.perf_counter() - started
        log.info("radiograph %s: %s, decoded in %.3f s", dataset.get("SOPInstanceUID"), pixels.shape, seconds)
        return SourceImage(dataset, pixels, {"decode_seconds": seconds})


def instances_of(study_selected_series_list: Iterable[Any] | None) -> list[Dataset]:
    """The native pydicom datasets of every SOP instance in the SDK's ``list[StudySelectedSeries]``."""
    datasets = []
    for study in study_selected_series_list or []:
        for selected in study.selected_series:
            datasets += [sop.get_native_sop_instance() for sop in selected.series.get_sop_instances()]
    return datasets


def choose_frontal_image(instances: Iterable[Dataset]) -> Dataset:
    """The first CR/DX dataset with pixel data whose View Position (0018,5101) is not lateral.

    An image "FOR PRESENTATION" is preferred to one "FOR PROCESSING" (Presentation Intent Type (0008,0068),
    PS3.3 C.8.11.1: raw detector data, not processed for reading). Raises :class:`NoRadiographError` with what
    was found instead when there is none.
    """
    seen: list[str] = []
    for_processing: list[Dataset] = []
    for ds in instances:
        modality = str(ds.get("Modality", "")).upper()
        view = str(ds.get("ViewPosition", "")).upper()
        if modality in RADIOGRAPH_MODALITIES and is_image(ds) and view not in LATERAL_VIEWS:
            if str(ds.get("PresentationIntentType", "")).upper() != "FOR PROCESSING":
                return ds
            for_processing.append(ds)
            continue
        seen.append(f"{modality or '?'}{'/' + view if view else ''}{'' if is_image(ds) else ' (no pixel data)'}")
    if for_processing:
        log.warning("only FOR PROCESSING radiographs among the inputs; reading %s", for_processing[0].SOPInstanceUID)
        return for_processing[0]
    if not seen:
        raise NoRadiographError("no CR/DX image among the inputs (no CR or DX series)")
    raise NoRadiographError(f"no frontal CR/DX image among the inputs (found: {', '.join(sorted(set(seen)))})")
