"""An app's label map as a DICOM Segmentation (PS3.3 A.51), built with highdicom: one segment per label,
algorithm type AUTOMATIC with the model as the algorithm (family DCM 123110 "Artificial Intelligence"),
segmented property category "Anatomical Structure" and the structure's code as its type, referencing the
source images frame by frame. Pure: source headers and the label map in, a dataset out."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from interop.writeback.sr import MANUFACTURER, coded, series_description
from operators.app_result import AppResult, Segmentation


def segmentation(result: AppResult, seg: Segmentation, labels: np.ndarray, source: Sequence[Dataset], *,
                 series_instance_uid: str, sop_instance_uid: str, series_number: int = 9902,
                 instance_number: int = 1) -> hd.seg.Segmentation:
    """DICOM SEG for ``seg`` (``labels``: frames x rows x columns, frame i on
    ``seg.referenced_sop_instance_uids[i]``); ``source`` holds those images' data sets (headers suffice)."""
    by_sop = {str(ds.SOPInstanceUID): ds for ds in source}
    missing = [u for u in seg.referenced_sop_instance_uids if u not in by_sop]
    if missing:
        raise ValueError(f"{len(missing)} referenced source image(s) not given, e.g. {missing[0]}")
    ordered = [by_sop[u] for u in seg.referenced_sop_instance_uids]
    if labels.shape[0] != len(ordered):
        raise ValueError(f"the label map has {labels.shape[0]} frames for {len(ordered)} source images")
    algorithm = hd.AlgorithmIdentificationSequence(name=result.model.name, version=result.model.version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    present = set(np.unique(labels).tolist()) - {0}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.number, segment_label=s.name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=coded(s.code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"{result.app.name}: {s.name}"[:64], tracking_uid=hd.UID(),
        )
        for s in seg.segments if s.number in present
    ]
    if not descriptions:
        raise ValueError("the label map holds none of the segments")
    # highdicom wants segment numbers 1..N in order: map ours onto that when some are absent.
    numbers = [d.SegmentNumber for d in descriptions]
    remapped = np.zeros_like(labels, dtype=np.uint8)
    for new, old in enumerate(numbers, 1):
        remapped[labels == old] = new
    for new, d in enumerate(descriptions, 1):
        d.SegmentNumber = new
    return hd.seg.Segmentation(
        source_images=ordered, pixel_array=remapped, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_instance_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=instance_number, manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{result.app.name} {result.app.version}"[:64],
        software_versions=f"{result.model.name} {result.model.version}"[:64], device_serial_number="0",
        series_description=series_description(result),
    )
