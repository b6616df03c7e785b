"""WADO-RS: the Retrieve transaction for instances, metadata and bulk data (PS3.18 §10.4).

* Study / Series / Instance (§10.4.1.1.1–3): ``multipart/related; type="application/dicom"``, one part per
  instance, streamed from the blob store in chunks. With ``transfer-syntax=*`` (or the stored one) the
  stored Part 10 file goes out byte for byte; without the parameter the default, Explicit VR Little
  Endian, is sent (PS3.18 §8.7.3.5.2), converting where the stored syntax differs; any other syntax → 406.
* Metadata (§10.4.1.1.2): DICOM JSON of every instance, bulk values as ``BulkDataURI``.
* Bulk data (§10.4.1.1.5): the value a ``BulkDataURI`` names, as ``application/octet-stream``; Pixel Data
  follows the frames rules (:mod:`interop.dicomweb.frames`).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from interop.api.deps import CanReadImaging, NodeDep
from interop.dicomweb.common import accept_ranges, dicom_json, dicomweb_base, locate, require_json
from interop.dicomweb.dicomjson import PIXEL_DATA, Json, instance_url, resolve_bulk_path, to_dicom_json
from interop.dicomweb.frames import pixel_parts
from interop.dicomweb.media import DICOM, EXPLICIT_VR_LE, OCTET_STREAM, dicom_transfer_syntax, pixel_plan
from interop.dicomweb.multipart import Part, file_chunks, multipart_body, multipart_content_type, new_boundary, primed
from interop.dicomweb.pixels import layout_of, native_pixel_chunks, to_explicit_vr_little_endian
from interop.errors import NotAcceptable, NotFound
from interop.node import Node
from interop.store.instances import StoredInstance

router = APIRouter(tags=["dicomweb: WADO-RS"])


def _stored_chunks(node: Node, blob_key: str) -> Iterator[bytes]:
    with node.blobs.open(blob_key) as fp:
        yield from file_chunks(fp)


def _instance_part(node: Node, inst: StoredInstance, base: str, ts: str | None) -> Part:
    location = instance_url(base, inst.study_uid, inst.series_uid, inst.sop_uid)
    if ts is None or ts == inst.transfer_syntax_uid:
        return Part(f"{DICOM}; transfer-syntax={inst.transfer_syntax_uid}", _stored_chunks(node, inst.blob_key),
                    location)

    def converted() -> Iterator[bytes]:
        with node.blobs.open(inst.blob_key) as fp:
            yield to_explicit_vr_little_endian(fp)

    return Part(f"{DICOM}; transfer-syntax={ts}", converted(), location)


def retrieve(request: Request, node: Node, instances: list[StoredInstance]) -> StreamingResponse:
    """The instances as ``multipart/related; type="application/dicom"``."""
    ts = dicom_transfer_syntax(accept_ranges(request))
    if ts is not None and ts != EXPLICIT_VR_LE:
        missing = [i.sop_uid for i in instances if i.transfer_syntax_uid != ts]
        if missing:
            raise NotAcceptable(
                f"{len(missing)} instance(s) are not stored in transfer syntax {ts} and can't be converted to it; "
                "ask for transfer-syntax=* or 1.2.840.10008.1.2.1"
            )
    base = dicomweb_base(request, node)
    boundary = new_boundary()
    parts = (_instance_part(node, inst, base, ts) for inst in instances)
    return StreamingResponse(multipart_body(parts, boundary), media_type=multipart_content_type(DICOM, boundary))


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(study: str, request: Request, node: NodeDep, who: CanReadImaging) -> StreamingResponse:
    """Study resource (PS3.18 §10.4.1.1.1)."""
    return retrieve(request, node, locate(node, who, study))


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(study: str, series: str, request: Request, node: NodeDep, who: CanReadImaging) -> StreamingResponse:
    """Series resource (PS3.18 §10.4.1.1.1)."""
    return retrieve(request, node, locate(node, who, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance")
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, node: NodeDep, who: CanReadImaging
) -> StreamingResponse:
    """Instance resource (PS3.18 §10.4.1.1.1)."""
    return retrieve(request, node, locate(node, who, study, series, instance))


# -- metadata ------------------------------------------------------------------------------------------


def instance_metadata(node: Node, inst: StoredInstance, base: str) -> Json:
    """DICOM JSON of one instance with Bulk Data URIs under ``…/instances/{uid}/bulkdata/``."""
    prefix = instance_url(base, inst.study_uid, inst.series_uid, inst.sop_uid) + "/bulkdata/"
    header = node.store.read_header_dataset(inst.blob_key)
    out = to_dicom_json(header, lambda path: prefix + path)
    layout = layout_of(node.blobs, inst.blob_key)
    if layout is not None:
        out[f"{PIXEL_DATA:08X}"] = {"vr": layout.vr, "BulkDataURI": prefix + f"{PIXEL_DATA:08X}"}
    return out


def metadata(request: Request, node: Node, instances: list[StoredInstance]) -> JSONResponse:
    require_json(accept_ranges(request))
    base = dicomweb_base(request, node)
    return dicom_json([instance_metadata(node, inst, base) for inst in instances])


@router.get("/studies/{study}/metadata", summary="Retrieve a study's metadata")
def study_metadata(study: str, request: Request, node: NodeDep, who: CanReadImaging) -> JSONResponse:
    """Study Metadata (PS3.18 §10.4.1.1.2)."""
    return metadata(request, node, locate(node, who, study))


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve a series' metadata")
def series_metadata(study: str, series: str, request: Request, node: NodeDep, who: CanReadImaging) -> JSONResponse:
    """Series Metadata (PS3.18 §10.4.1.1.2)."""
    return metadata(request, node, locate(node, who, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", summary="Retrieve an instance's metadata")
def instance_metadata_route(
    study: str, series: str, instance: str, request: Request, node: NodeDep, who: CanReadImaging
) -> JSONResponse:
    """Instance Metadata (PS3.18 §10.4.1.1.2)."""
    return metadata(request, node, locate(node, who, study, series, instance))


# -- bulk data -----------------------------------------------------------------------------------------


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}", summary="Retrieve bulk data")
def bulkdata(
    study: str, series: str, instance: str, path: str, request: Request, node: NodeDep, who: CanReadImaging
) -> StreamingResponse:
    """The value a metadata ``BulkDataURI`` names (PS3.18 §10.4.1.1.5, §8.7.3.3)."""
    (inst,) = locate(node, who, study, series, instance)
    ranges = accept_ranges(request)
    boundary = new_boundary()
    if path.strip("/").upper() == f"{PIXEL_DATA:08X}":
        layout = layout_of(node.blobs, inst.blob_key)
        if layout is None:
            raise NotFound(f"instance {instance} has no Pixel Data")
        plan = pixel_plan(ranges, layout.transfer_syntax)
        if plan is None:
            raise NotAcceptable(f"pixel data stored as {layout.transfer_syntax} can't be sent in an accepted type")
        if not layout.encapsulated:
            part = Part(plan.content_type, native_pixel_chunks(node.blobs, inst.blob_key, layout))
            body = multipart_body([part], boundary)
        else:
            parts = primed(pixel_parts(node, inst, layout, plan, list(range(1, layout.frames + 1))))
            body = multipart_body(parts, boundary)
        return StreamingResponse(body, media_type=multipart_content_type(plan.media_type, boundary))
    if pixel_plan(ranges, EXPLICIT_VR_LE) is None:
        raise NotAcceptable("bulk data is available as application/octet-stream only")
    value = resolve_bulk_path(node.store.read_header_dataset(inst.blob_key), path)
    part = Part(OCTET_STREAM, [value])
    media_type = multipart_content_type(OCTET_STREAM, boundary)
    return StreamingResponse(multipart_body([part], boundary), media_type=media_type)
