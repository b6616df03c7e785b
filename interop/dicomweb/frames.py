"""WADO-RS Frames (PS3.18 §10.4.1.1.4): pixel data of chosen frames, one part per frame.

Native pixel data goes out as ``application/octet-stream`` (little-endian, uncompressed; single-bit frames, as in
a BINARY SEG, each packed on its own from bit 0 and padded to a whole byte). Compressed pixel
data goes out as stored, in its own media type (``image/jp2``, ``image/jpeg``…) or as octet-stream, when
the Accept header allows it (``transfer-syntax=*`` or the stored UID); otherwise it is decoded to
uncompressed octet-stream. Each part's Content-Type names its ``transfer-syntax`` (§8.7.3.5.2), which is
how viewers (OHIF / Cornerstone) know what they got.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from interop.api.deps import CanReadImaging, NodeDep
from interop.dicomweb.common import accept_ranges, dicomweb_base, locate
from interop.dicomweb.dicomjson import instance_url
from interop.dicomweb.media import PixelPlan, pixel_plan
from interop.dicomweb.multipart import Part, multipart_body, multipart_content_type, new_boundary, primed
from interop.dicomweb.pixels import PixelLayout, check_frames, frame_bytes, layout_of, parse_frame_list
from interop.errors import NotAcceptable, NotFound
from interop.node import Node
from interop.store.instances import StoredInstance

router = APIRouter(tags=["dicomweb: WADO-RS"])


def pixel_parts(
    node: Node, inst: StoredInstance, layout: PixelLayout, plan: PixelPlan, numbers: list[int],
    location: str | None = None,
) -> Iterator[Part]:
    """One part per frame number (1-based), each read when the response reaches it."""
    header = node.store.read_header_dataset(inst.blob_key)
    for n in numbers:
        data = frame_bytes(node.blobs, inst.blob_key, layout, n - 1, decode=plan.decode, header=header)
        yield Part(plan.content_type, [data], f"{location}/frames/{n}" if location else None)


def instance_layout(node: Node, inst: StoredInstance) -> PixelLayout:
    layout = layout_of(node.blobs, inst.blob_key)
    if layout is None:
        raise NotFound(f"instance {inst.sop_uid} has no Pixel Data")
    return layout


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", summary="Retrieve frames")
def retrieve_frames(
    study: str, series: str, instance: str, frames: str, request: Request, node: NodeDep, who: CanReadImaging
) -> StreamingResponse:
    """Frames resource (PS3.18 §10.4.1.1.4): ``frames`` is a comma-separated list of frame numbers."""
    numbers = parse_frame_list(frames)
    (inst,) = locate(node, who, study, series, instance)
    layout = instance_layout(node, inst)
    check_frames(numbers, layout)
    plan = pixel_plan(accept_ranges(request), layout.transfer_syntax)
    if plan is None:
        raise NotAcceptable(
            f"frames stored as {layout.transfer_syntax} can be sent as application/octet-stream "
            "(uncompressed) or in their stored media type only"
        )
    location = instance_url(dicomweb_base(request, node), study, series, instance)
    boundary = new_boundary()
    body = multipart_body(primed(pixel_parts(node, inst, layout, plan, numbers, location)), boundary)
    return StreamingResponse(body, media_type=multipart_content_type(plan.media_type, boundary))
