"""What a succeeded job owes each DICOM destination: one SR for its findings and measurements, one SEG per
segmentation, one heat-map image per present finding that has a heat-map; each with a SOP Instance UID (and a
series) derived from the job's idempotency key, so a re-delivery, a retry or a second run of the outbox can only
ever store the same object again (DESIGN promise 2). Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


def derived_uid(key: str, *parts: object) -> str:
    """``2.25.<UUID as an integer>`` (PS3.5 §B.2) from a UUID-5 of ``key`` and ``parts``."""
    name = ":".join([key, *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'interop:writeback:{name}').int}"


@dataclass(frozen=True)
class Planned:
    destination: str
    kind: str  # sr | seg
    item: int
    sop_instance_uid: str
    series_instance_uid: str


def plan(idempotency_key: str, inputs: dict[str, Any], result: dict[str, Any] | Any,
         destinations: list[str] | tuple[str, ...] = ("local",)) -> list[Planned]:
    """The objects for a job's result, for each of ``destinations``; none for a job that read no images (a
    lab model's result goes to FHIR only)."""
    if not inputs.get("sop_instance_uids"):
        return []
    if not isinstance(result, dict):
        result = result.as_json()
    items: list[tuple[str, int]] = []
    if result.get("findings") or result.get("measurements"):
        items.append(("sr", 0))
    items += [("seg", i) for i, _ in enumerate(result.get("segmentations") or [])]
    items += [("heatmap", i) for i, f in enumerate(result.get("findings") or [])
              if f.get("present") and f.get("heatmap")]
    return [Planned(dest, kind, i, derived_uid(idempotency_key, kind, i, "instance"),
                    derived_uid(idempotency_key, kind, "series"))
            for dest in destinations for kind, i in items]
