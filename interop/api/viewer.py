"""What the worklist's viewer needs beyond the reports API: the worklist's counts, and for a report the images
to show with the overlays that go on each (a finding's heat-map, a segmentation's slice) as transparent PNGs.

The same SMART scope as the reports API reads all of it (``DiagnosticReport`` read): an overlay is a view of
the report's AI result. The images themselves come from WADO-RS rendered (``/dicomweb/.../rendered``), which
the manifest links. Overlays never change (a job's result is immutable), so they may be cached privately.
"""

from __future__ import annotations

import io
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import exists, func, select

from interop.api.deps import NodeDep, require
from interop.auth import Principal
from interop.errors import InvalidInput, NotFound
from interop.jobs.models import JobResult
from interop.node import Node
from interop.reports.models import REPORT_STATES, Report
from interop.store.models import Instance, Series, Study
from interop.ui import overlays
from operators.app_result import AppResult

router = APIRouter(prefix="/api", tags=["viewer"])

CanReadReports = Annotated[Principal, Depends(require("DiagnosticReport", "r"))]

#: Results without images (a lab model's) are counted under this modality.
NO_IMAGES = "labs"
#: Overlays are views of an immutable result: the browser may keep them (privately) for a day.
OVERLAY_CACHE = "private, max-age=86400, immutable"
#: The largest overlay side drawn on request (a bigger one would only cost memory: screens are smaller).
MAX_VIEWPORT = 4096
Viewport = Annotated[str | None, Query(pattern=r"^\d{1,5},\d{1,5}$",
                                       description="vw,vh: fit into this many pixels, as WADO-RS rendered")]


# -- the worklist's counts -----------------------------------------------------------------------------------


@router.get("/worklist/counts")
def worklist_counts(
    node: NodeDep,
    who: CanReadReports,
    status: Annotated[str | None, Query(description="comma-separated report states; default preliminary")] = None,
    patient_id: str | None = None,
) -> dict[str, Any]:
    """Reports per status (all states), and for the given states (default ``preliminary``) per priority,
    app and modality, plus the modalities each app's studies have (the worklist's modality column and
    filter). A report's modality is that of its study's received series (not the node's own write-backs);
    a result without images counts as ``labs``."""
    states = [s for s in (status or "preliminary").split(",") if s]
    unknown = set(states) - set(REPORT_STATES)
    if unknown:
        raise InvalidInput(f"unknown report state(s): {', '.join(sorted(unknown))}", expression="status")
    where = [Report.patient_id == patient_id] if patient_id else []
    from interop.api.reports import patient_ids

    allowed = patient_ids(node, who)
    if allowed is not None:  # a patient/-scoped token counts its patient's reports only
        where.append(Report.patient_id.in_(sorted(allowed)))
    received = exists().where(Instance.series_pk == Series.id, Instance.source != "writeback")
    with node.db.reading() as s:
        by_status = dict(s.execute(select(Report.state, func.count()).where(*where).group_by(Report.state)).all())
        rows = s.execute(select(Report.priority, Report.app, func.count()).where(Report.state.in_(states), *where)
                         .group_by(Report.priority, Report.app)).all()
        imaged = s.execute(
            select(Report.app, Series.modality, func.count(func.distinct(Report.id)))
            .join(Study, Study.study_uid == Report.study_uid).join(Series, Series.study_pk == Study.id)
            .where(Report.state.in_(states), received, *where).group_by(Report.app, Series.modality)).all()
        no_images = dict(s.execute(
            select(Report.app, func.count()).where(Report.state.in_(states), Report.study_uid.is_(None), *where)
            .group_by(Report.app)).all())
    by_priority: dict[str, int] = {}
    by_app: dict[str, int] = {}
    for priority, app, n in rows:
        by_priority[priority] = by_priority.get(priority, 0) + n
        by_app[app] = by_app.get(app, 0) + n
    by_modality: dict[str, int] = {}
    app_modalities: dict[str, set[str]] = {}
    for app, modality, n in imaged:
        key = modality or "OT"
        by_modality[key] = by_modality.get(key, 0) + n
        app_modalities.setdefault(app, set()).add(key)
    for app, n in no_images.items():
        by_modality[NO_IMAGES] = by_modality.get(NO_IMAGES, 0) + n
        app_modalities.setdefault(app, set()).add(NO_IMAGES)
    return {"states": states, "total": sum(by_app.values()),
            "status": {st: int(by_status.get(st, 0)) for st in REPORT_STATES},
            "priority": {"stat": by_priority.get("stat", 0), "routine": by_priority.get("routine", 0)},
            "app": dict(sorted(by_app.items())), "modality": dict(sorted(by_modality.items())),
            "app_modalities": {app: sorted(m) for app, m in sorted(app_modalities.items())}}


# -- a report's images and overlays --------------------------------------------------------------------------


def _report_result(node: Node, who: Principal, report_id: int) -> tuple[Report, AppResult, dict[str, str]]:
    """The report, its job's result and the result's arrays (file name -> blob key); 403 for a
    ``patient/``-scoped token and another patient's report."""
    from interop.api.reports import check_report_patient

    with node.db.reading() as s:
        report = s.get(Report, report_id)
        if report is None:
            raise NotFound(f"no report {report_id}")
        check_report_patient(node, who, report.patient_id)
        row = s.scalars(select(JobResult).where(JobResult.job_id == report.job_id)).first()
        if row is None:
            raise NotFound(f"report {report_id} has no result")
        s.expunge(report)
        content, arrays = row.content, row.arrays
    return report, AppResult.model_validate(json.loads(content)), json.loads(arrays or "{}")


def _load_array(node: Node, arrays: dict[str, str], name: str) -> np.ndarray:
    key = arrays.get(name)
    if key is None:
        raise NotFound(f"the result has no array {name!r}")
    path = node.blobs.local_path(key)
    if path is not None:  # memory-mapped: a slice of a label map reads only that slice
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with node.blobs.open(key) as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def _viewport(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    vw, vh = (int(v) for v in value.split(","))
    if not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
        raise InvalidInput(f"viewport must be vw,vh with each 1..{MAX_VIEWPORT}", expression="viewport")
    return vw, vh


def _png(rgba: np.ndarray) -> Response:
    return Response(overlays.png(rgba), media_type="image/png", headers={"Cache-Control": OVERLAY_CACHE})


@router.get("/reports/{report_id}/overlays")
def report_overlays(report_id: int, node: NodeDep, who: CanReadReports) -> dict[str, Any]:
    """The images of a report's result in reading order, each with the rendered URL and the overlays that
    lie on it (heat-maps of findings, the slice of each segmentation); the legends; and which image to show
    first (the slice with most labelled structure, else the image of the most probable present finding)."""
    report, result, arrays = _report_result(node, who, report_id)
    uids = list(result.inputs.sop_instance_uids)
    for seg in result.segmentations:  # a segmentation's frame order is the reading order of its slices
        framed = set(seg.referenced_sop_instance_uids)
        uids = list(seg.referenced_sop_instance_uids) + [u for u in uids if u not in framed]
    for f in result.findings:
        if f.sop_instance_uid and f.sop_instance_uid not in uids:
            uids.append(f.sop_instance_uid)
    stored: dict[str, Any] = {}
    if uids:
        with node.db.reading() as s:
            q = (select(Instance.sop_uid, Series.series_uid, Study.study_uid, Series.modality, Instance.rows,
                        Instance.columns, Instance.number_of_frames, Instance.instance_number)
                 .join(Series, Series.id == Instance.series_pk).join(Study, Study.id == Instance.study_pk))
            for chunk in range(0, len(uids), 500):
                for row in s.execute(q.where(Instance.sop_uid.in_(uids[chunk:chunk + 500]))):
                    stored[row.sop_uid] = row
    if not result.segmentations:  # no frame order given: instance number order
        uids.sort(key=lambda u: (stored[u].instance_number or 0) if u in stored else 0)
    images: list[dict[str, Any]] = []
    index_of: dict[str, int] = {}
    for uid in uids:
        hit = stored.get(uid)
        if hit is None:  # not (or no longer) in this node's store: nothing to render
            continue
        index_of[uid] = len(images)
        images.append({
            "study_uid": hit.study_uid, "series_uid": hit.series_uid, "sop_instance_uid": uid,
            "modality": hit.modality, "rows": hit.rows, "columns": hit.columns, "frames": hit.number_of_frames or 1,
            "rendered": f"/dicomweb/studies/{hit.study_uid}/series/{hit.series_uid}/instances/{uid}/rendered",
            "overlays": []})
    base = f"/api/reports/{report_id}/overlays"
    # Heat-maps in the findings' reading order: present ones first, most probable first (the page numbers
    # them 1, 2, ... for its keys).
    for f in sorted(result.findings, key=lambda f: (f.present, f.probability), reverse=True):
        if f.heatmap and f.heatmap in arrays and f.sop_instance_uid in index_of:
            images[index_of[f.sop_instance_uid]]["overlays"].append({
                "kind": "heatmap", "name": f.name, "label": f"{f.code.display} heat-map", "present": f.present,
                "probability": f.probability, "url": f"{base}/heatmap/{f.name}.png"})
    segmentations = []
    initial: int | None = None
    for i, seg in enumerate(result.segmentations):
        segmentations.append({"index": i, "series_uid": seg.series_instance_uid, "legend": [
            {"number": sg.number, "name": sg.name, "display": sg.code.display,
             "laterality": sg.laterality.display if sg.laterality else None,
             "colour": overlays.hex_colour(overlays.segment_colour(sg.number))} for sg in seg.segments]})
        for frame, uid in enumerate(seg.referenced_sop_instance_uids):
            if uid in index_of:
                images[index_of[uid]]["overlays"].append({
                    "kind": "segmentation", "name": f"segmentation-{i}", "label": "Segmentation",
                    "segmentation": i, "url": f"{base}/segmentation/{i}/{frame}.png"})
        if initial is None and seg.file in arrays:
            best = seg.referenced_sop_instance_uids[overlays.best_frame(_load_array(node, arrays, seg.file))]
            initial = index_of.get(best)
    if initial is None:
        ranked = sorted((f for f in result.findings if f.sop_instance_uid in index_of),
                        key=lambda f: (f.present, f.probability), reverse=True)
        initial = index_of[str(ranked[0].sop_instance_uid)] if ranked else len(images) // 2
    return {"report_id": report.id, "job_id": report.job_id, "app": report.app,
            "modalities": sorted({i["modality"] for i in images if i["modality"]}),
            "images": images, "initial_image": initial if images else None, "segmentations": segmentations,
            "heatmap_ramp": overlays.heatmap_ramp(), "default_opacity": overlays.DEFAULT_OPACITY}


@router.get("/reports/{report_id}/overlays/heatmap/{finding}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def heatmap_overlay(report_id: int, finding: str, node: NodeDep, who: CanReadReports,
                    viewport: Viewport = None) -> Response:
    """A finding's heat-map as a transparent RGBA PNG: the source image's size, or fitted into ``viewport``
    like the rendered frame."""
    _report, result, arrays = _report_result(node, who, report_id)
    found = next((f for f in result.findings if f.name == finding), None)
    if found is None or not found.heatmap:
        raise NotFound(f"report {report_id} has no heat-map of a finding {finding!r}")
    heat = _load_array(node, arrays, found.heatmap)
    size = overlays.fitted_size(heat.shape[1], heat.shape[0], _viewport(viewport))
    return _png(overlays.heatmap_rgba(heat, size))


@router.get("/reports/{report_id}/overlays/segmentation/{index}/{frame}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def segmentation_overlay(report_id: int, index: int, frame: int, node: NodeDep, who: CanReadReports,
                         viewport: Viewport = None) -> Response:
    """Frame ``frame`` (0-based, on ``referenced_sop_instance_uids[frame]``) of segmentation ``index`` as an
    RGBA PNG, one colour per segment (the manifest's legend)."""
    _report, result, arrays = _report_result(node, who, report_id)
    if not 0 <= index < len(result.segmentations):
        raise NotFound(f"report {report_id} has no segmentation {index}")
    labels = _load_array(node, arrays, result.segmentations[index].file)
    if labels.ndim != 3 or not 0 <= frame < labels.shape[0]:
        raise NotFound(f"segmentation {index} of report {report_id} has no frame {frame}")
    size = overlays.fitted_size(labels.shape[2], labels.shape[1], _viewport(viewport))
    return _png(overlays.labels_rgba(np.asarray(labels[frame]), size))
