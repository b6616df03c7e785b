"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.6, §8.3.5.1).

A rendered frame is the decoded pixel data after the Modality LUT and the VOI (the ``window`` parameter,
else the instance's own window or VOI LUT, else its full range), as ``image/jpeg`` (default) or
``image/png`` per Accept or the ``accept`` parameter, scaled into ``viewport`` when given. We offer
single-frame media types only: a rendered instance is its first frame, and rendered frames take one
frame number. A rendered series or study is ``multipart/related`` with one rendered image per instance that
has pixel data. Thumbnails are the rendered first frame (of the middle instance for a series or study)
fitted into 128×128 unless a ``viewport`` says otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from interop.api.deps import CanReadImaging, NodeDep
from interop.dicomweb.common import accept_ranges, locate
from interop.dicomweb.media import rendered_media_type
from interop.dicomweb.multipart import Part, multipart_body, multipart_content_type, new_boundary, primed
from interop.dicomweb.pixels import (
    RenderOptions,
    check_frames,
    decoded_frame,
    layout_of,
    parse_frame_list,
    parse_render_options,
    render,
)
from interop.errors import InvalidInput, NotAcceptable, NotFound
from interop.node import Node
from interop.store.instances import StoredInstance

router = APIRouter(tags=["dicomweb: WADO-RS rendered"])

THUMBNAIL_VIEWPORT = "128,128"


def options(request: Request, *, thumbnail: bool = False) -> RenderOptions:
    media_type = rendered_media_type(accept_ranges(request))
    if media_type is None:
        raise NotAcceptable("rendered images are available as image/jpeg or image/png")
    p = request.query_params
    viewport = p.get("viewport") or (THUMBNAIL_VIEWPORT if thumbnail else None)
    return parse_render_options(media_type, p.get("quality"), p.get("window"), viewport)


def render_frame(node: Node, inst: StoredInstance, number: int, opts: RenderOptions) -> bytes:
    """Frame ``number`` (1-based) of ``inst`` rendered; :class:`NotFound` if it has no such frame."""
    layout = layout_of(node.blobs, inst.blob_key)
    if layout is None:
        raise NotFound(f"instance {inst.sop_uid} has no Pixel Data to render")
    check_frames([number], layout)
    arr = decoded_frame(node.blobs, inst.blob_key, number - 1, layout)
    return render(arr, node.store.read_header_dataset(inst.blob_key), opts)


#: Rendered images may be kept by the browser that asked (a token-protected response: ``private``) for this
#: long; after that it revalidates with ``If-None-Match`` and gets 304 without a new rendering.
CACHE_SECONDS = 300


def image_etag(inst: StoredInstance, number: int, opts: RenderOptions) -> str:
    """A strong validator of one rendered frame: the stored object (blob key and size) and every rendering
    option; pure."""
    key = f"{inst.blob_key}|{inst.size}|{inst.transfer_syntax_uid}|{number}|{opts!r}"
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def _image(node: Node, inst: StoredInstance, number: int, opts: RenderOptions,
           request: Request | None = None) -> Response:
    """One rendered frame, with an ETag; 304 when the browser already holds it (``If-None-Match``): moving
    back and forth between cases in the worklist costs no rendering."""
    etag = image_etag(inst, number, opts)
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={CACHE_SECONDS}", "Vary": "Accept, Authorization"}
    if request is not None:
        wanted = [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
        if etag in wanted or "*" in wanted:
            return Response(status_code=304, headers=headers)
    return Response(render_frame(node, inst, number, opts), media_type=opts.media_type, headers=headers)


def _with_pixels(node: Node, instances: list[StoredInstance]) -> list[StoredInstance]:
    return [i for i in instances if layout_of(node.blobs, i.blob_key) is not None]


def _representative(node: Node, instances: list[StoredInstance]) -> StoredInstance:
    images = _with_pixels(node, instances)
    if not images:
        raise NotFound("nothing here has pixel data to render")
    first_series = [i for i in images if i.series_uid == images[0].series_uid]
    return first_series[len(first_series) // 2]


def _rendered_many(node: Node, instances: list[StoredInstance], opts: RenderOptions) -> StreamingResponse:
    images = _with_pixels(node, instances)
    if not images:
        raise NotFound("nothing here has pixel data to render")

    def parts() -> Iterator[Part]:
        for inst in images:
            yield Part(opts.media_type, [render_frame(node, inst, 1, opts)])

    boundary = new_boundary()
    return StreamingResponse(multipart_body(primed(parts()), boundary),
                             media_type=multipart_content_type(opts.media_type, boundary))


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered", summary="Render an instance")
def rendered_instance(
    study: str, series: str, instance: str, request: Request, node: NodeDep, who: CanReadImaging
) -> Response:
    """Rendered Instance (PS3.18 §10.4.1.1.3): its first frame."""
    (inst,) = locate(node, who, study, series, instance)
    return _image(node, inst, 1, options(request), request)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            summary="Render a frame")
def rendered_frames(
    study: str, series: str, instance: str, frames: str, request: Request, node: NodeDep, who: CanReadImaging
) -> Response:
    """Rendered Frames (PS3.18 §10.4.1.1.3): one frame, since we offer single-frame media types only."""
    numbers = parse_frame_list(frames)
    if len(numbers) != 1:
        raise InvalidInput("rendered frames: give one frame number (only single-frame media types are offered)",
                           expression="frames")
    (inst,) = locate(node, who, study, series, instance)
    return _image(node, inst, numbers[0], options(request), request)


@router.get("/studies/{study}/series/{series}/rendered", summary="Render a series")
def rendered_series(study: str, series: str, request: Request, node: NodeDep, who: CanReadImaging) -> StreamingResponse:
    """Rendered Series (PS3.18 §10.4.1.1.3): one rendered image per instance."""
    return _rendered_many(node, locate(node, who, study, series), options(request))


@router.get("/studies/{study}/rendered", summary="Render a study")
def rendered_study(study: str, request: Request, node: NodeDep, who: CanReadImaging) -> StreamingResponse:
    """Rendered Study (PS3.18 §10.4.1.1.3): one rendered image per instance."""
    return _rendered_many(node, locate(node, who, study), options(request))


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail", summary="Instance thumbnail")
def thumbnail_instance(
    study: str, series: str, instance: str, request: Request, node: NodeDep, who: CanReadImaging
) -> Response:
    """Instance Thumbnail (PS3.18 §10.4.1.1.6)."""
    (inst,) = locate(node, who, study, series, instance)
    return _image(node, inst, 1, options(request, thumbnail=True), request)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Series thumbnail")
def thumbnail_series(study: str, series: str, request: Request, node: NodeDep, who: CanReadImaging) -> Response:
    """Series Thumbnail (PS3.18 §10.4.1.1.6): the middle instance's first frame."""
    inst = _representative(node, locate(node, who, study, series))
    return _image(node, inst, 1, options(request, thumbnail=True), request)


@router.get("/studies/{study}/thumbnail", summary="Study thumbnail")
def thumbnail_study(study: str, request: Request, node: NodeDep, who: CanReadImaging) -> Response:
    """Study Thumbnail (PS3.18 §10.4.1.1.6): the middle instance of the first series with images."""
    inst = _representative(node, locate(node, who, study))
    return _image(node, inst, 1, options(request, thumbnail=True), request)
