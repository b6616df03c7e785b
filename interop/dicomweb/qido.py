"""QIDO-RS: the Search transaction of the Studies Service (PS3.18 §10.6).

Matching, ``includefield``, ``fuzzymatching``, ``limit`` and ``offset`` are :mod:`interop.store.query`'s
(the engine C-FIND uses too); this module binds the six search resources (Table 10.6.1-1) to it and adds
the Retrieve URL (0008,1190) of each match (Tables 10.6.3-3/4/5).

Zero matches answer ``200`` with an empty array: PS3.18 used to specify ``204 No Content``, the current
edition specifies ``200`` with an empty payload (consistent with RFC 9110), and every client we know
(dicomweb-client, OHIF) accepts both; a body that is always a JSON array is easier for scripts.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from interop.api.deps import CanSearchImaging, NodeDep, imaging_compartment
from interop.auth import Principal
from interop.dicomweb.common import accept_ranges, dicom_json, dicomweb_base, require_json
from interop.dicomweb.dicomjson import instance_url, series_url, study_url, to_dicom_json
from interop.node import Node
from interop.store.query import Level, parse_query, run_query

router = APIRouter(tags=["dicomweb: QIDO-RS"])

#: Query parameters of every resource that are not matching keys (PS3.18 §8.3.3, §8.3.4).
_NOT_KEYS = {"accept", "charset"}


def search(request: Request, node: Node, who: Principal, level: Level, bound: dict[str, str]) -> JSONResponse:
    """Run a search at ``level``; ``bound`` holds the UIDs the resource path fixes. A ``patient/``-scoped token
    finds the studies of the patient in context only (its other matching keys apply within them)."""
    require_json(accept_ranges(request))
    params = [(k, v) for k, v in request.query_params.multi_items() if k.lower() not in _NOT_KEYS]
    params += list(bound.items())  # the path wins over a query parameter naming the same attribute
    q = parse_query(level, params)
    q.patient_ids = imaging_compartment(node, who, "s")
    with node.db.reading() as session:
        matches = run_query(session, q, header_reader=node.store.read_header_dataset)
    base = dicomweb_base(request, node)
    body = []
    for ds in matches:
        item = to_dicom_json(ds)
        study = ds.get("StudyInstanceUID")
        series = ds.get("SeriesInstanceUID")
        sop = ds.get("SOPInstanceUID")
        url = None
        if level == "STUDY" and study:
            url = study_url(base, study)
        elif level == "SERIES" and study and series:
            url = series_url(base, study, series)
        elif level == "IMAGE" and study and series and sop:
            url = instance_url(base, study, series, sop)
        if url:
            item["00081190"] = {"vr": "UR", "Value": [url]}
        body.append(dict(sorted(item.items())))
    return dicom_json(body)


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, node: NodeDep, who: CanSearchImaging) -> JSONResponse:
    """All Studies (PS3.18 Table 10.6.1-1)."""
    return search(request, node, who, "STUDY", {})


@router.get("/studies/{study}/series", summary="Search for a study's series")
def search_study_series(study: str, request: Request, node: NodeDep, who: CanSearchImaging) -> JSONResponse:
    """Study's Series (PS3.18 Table 10.6.1-1)."""
    return search(request, node, who, "SERIES", {"StudyInstanceUID": study})


@router.get("/series", summary="Search for series")
def search_series(request: Request, node: NodeDep, who: CanSearchImaging) -> JSONResponse:
    """All Series (PS3.18 Table 10.6.1-1)."""
    return search(request, node, who, "SERIES", {})


@router.get("/studies/{study}/series/{series}/instances", summary="Search for a series' instances")
def search_series_instances(
    study: str, series: str, request: Request, node: NodeDep, who: CanSearchImaging
) -> JSONResponse:
    """Study Series' Instances (PS3.18 Table 10.6.1-1)."""
    return search(request, node, who, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series})


@router.get("/studies/{study}/instances", summary="Search for a study's instances")
def search_study_instances(study: str, request: Request, node: NodeDep, who: CanSearchImaging) -> JSONResponse:
    """Study's Instances (PS3.18 Table 10.6.1-1)."""
    return search(request, node, who, "IMAGE", {"StudyInstanceUID": study})


@router.get("/instances", summary="Search for instances")
def search_instances(request: Request, node: NodeDep, who: CanSearchImaging) -> JSONResponse:
    """All Instances (PS3.18 Table 10.6.1-1)."""
    return search(request, node, who, "IMAGE", {})
