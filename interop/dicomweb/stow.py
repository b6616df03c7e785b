"""STOW-RS: the Store transaction of the Studies Service (PS3.18 §10.5).

The body (``multipart/related; type="application/dicom"``, one PS3.10 instance per part) is parsed as it
arrives and each part written to a file beside the blob store, so an upload costs bounded memory. Each
part then goes through :meth:`InstanceStore.ingest`, the one ingest path C-STORE uses too (validate,
fsync, commit), inside one study-assembly session for the request. The answer is the Store Instances
Response Module (PS3.18 Annex I) as DICOM JSON:

* 200 every instance stored; 202 some failed or carry a warning; 409 none stored (§10.5.3.1);
* 415 for a Content-Type other than ``multipart/related; type="application/dicom"``; 400 for a body that
  isn't well-formed multipart.

Failure Reason (0008,1197) is the error's DIMSE status (Table I.2-2): C210 for a part that doesn't decode
(not DICOM, truncated), A900 for missing or mismatched identifying attributes, 0111 for a rejected
duplicate, A700 when out of resources. Table I.2-2 has no code of its own for an instance whose Study
Instance UID differs from the study in the request URL (§10.5.1.1.1); we answer A900 (the A9xx class,
"Data Set does not match"), and §10.5.3.1 names exactly that mismatch as a reason for 409.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from interop import logs
from interop.api.deps import CanStoreImaging, NodeDep
from interop.dicomweb.common import dicom_json, dicomweb_base
from interop.dicomweb.dicomjson import Json, instance_url, study_url
from interop.dicomweb.media import DICOM, parse_media_type, stow_boundary
from interop.dicomweb.multipart import MultipartReceiver, ReceivedPart
from interop.errors import InteropError, InvalidInput, OutOfResources
from interop.node import Node
from interop.store.instances import SUCCESS, StoreResult

log = logging.getLogger(__name__)

router = APIRouter(tags=["dicomweb: STOW-RS"])

#: Body bytes gathered before handing them to the parser in a worker thread.
_FEED_SIZE = 1 << 20
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class Failure:
    """A part that wasn't stored: its UIDs when they could be read, and the DIMSE status."""

    reason: int
    message: str
    sop_class_uid: str | None = None
    sop_uid: str | None = None


def _ui(value: str | None) -> Json:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def store_response(
    base: str, stored: list[StoreResult], failed: list[Failure], study: str | None
) -> tuple[int, Json]:
    """The HTTP status and Store Instances Response Module (PS3.18 §10.5.3, Annex I) for an outcome."""
    body: Json = {}
    studies = {r.study_uid for r in stored}
    top = study or (next(iter(studies)) if len(studies) == 1 else None)
    body["00081190"] = {"vr": "UR", "Value": [study_url(base, top)]} if top else {"vr": "UR"}
    if failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _ui(f.sop_class_uid),
                    "00081155": _ui(f.sop_uid),
                    "00081197": {"vr": "US", "Value": [f.reason]},
                }
                for f in failed
            ],
        }
    if stored:
        items = []
        for r in stored:
            item: Json = {
                "00081150": _ui(r.sop_class_uid),
                "00081155": _ui(r.sop_uid),
                "00081190": {"vr": "UR", "Value": [instance_url(base, r.study_uid, r.series_uid, r.sop_uid)]},
            }
            if r.status != SUCCESS:
                item["00081196"] = {"vr": "US", "Value": [r.status]}
            items.append(item)
        body["00081199"] = {"vr": "SQ", "Value": items}
    if not stored:
        status = 409
    elif failed or any(r.status != SUCCESS for r in stored):
        status = 202
    else:
        status = 200
    return status, body


def ingest_parts(node: Node, parts: list[ReceivedPart], study: str | None, session: str) -> tuple[
    list[StoreResult], list[Failure]
]:
    """Store each part through the one ingest path; never raises for a bad part."""
    stored: list[StoreResult] = []
    failed: list[Failure] = []
    for part in parts:
        try:
            content_type = part.content_type
            if content_type is not None and parse_media_type(content_type).type != DICOM:
                raise InvalidInput(f"part has Content-Type {content_type}, not application/dicom")
            stored.append(
                node.store.ingest(part.path, source="stow", expected_study_uid=study, session_key=session)
            )
        except InteropError as exc:
            sop_class, sop_uid = exc.identity
            log.warning("STOW-RS part not stored (%04X): %s", exc.dimse_status, exc.message)
            failed.append(Failure(exc.dimse_status, exc.message, sop_class, sop_uid))
        except Exception as exc:
            log.exception("STOW-RS part failed")
            failed.append(Failure(PROCESSING_FAILURE, str(exc)))
        finally:
            part.path.unlink(missing_ok=True)
    return stored, failed


async def receive(request: Request, receiver: MultipartReceiver) -> list[ReceivedPart]:
    """Stream the request body through ``receiver``, writing in a worker thread a megabyte at a time."""
    pending = bytearray()
    async for chunk in request.stream():
        pending += chunk
        if len(pending) >= _FEED_SIZE:
            data, pending = bytes(pending), bytearray()
            await run_in_threadpool(receiver.feed, data)
    if pending:
        await run_in_threadpool(receiver.feed, bytes(pending))
    return await run_in_threadpool(receiver.close)


async def store(request: Request, node: Node, study: str | None) -> JSONResponse:
    boundary = stow_boundary(request.headers.get("content-type"))
    node.space.check()  # below the free-space watermark: 503 + Retry-After before any byte is written
    receiver = MultipartReceiver(boundary, node.blobs.temp_dir())
    session = node.assembler.open_session()
    try:
        parts = await receive(request, receiver)
        if not parts:
            raise InvalidInput("multipart body has no parts")
        stored, failed = await run_in_threadpool(ingest_parts, node, parts, study, session)
    finally:
        node.assembler.close_session(session)
        receiver.discard()
    status, body = store_response(dicomweb_base(request, node), stored, failed, study)
    log.info("STOW-RS: %d stored, %d failed (HTTP %d)", len(stored), len(failed), status)
    cids = log_studies(stored)
    if not stored and failed and all(f.reason == OutOfResources.dimse_status for f in failed):
        # Nothing stored, and only for want of resources (storage down or full): a condition that passes, so
        # 503 with Retry-After (RFC 9110 §15.6.4), the FailedSOPSequence still saying A700 for each part.
        response = dicom_json(body, 503)
        response.headers["Retry-After"] = str(OutOfResources.retry_after_seconds)
        return response
    response = dicom_json(body, status)
    if cids:
        response.headers["X-Correlation-ID"] = ", ".join(cids)
    return response


def log_studies(stored: list[StoreResult]) -> list[str]:
    """One line per study the request stored instances of, under the study's correlation id and naming the
    request's (the link from this request to the study's job and results); returns the studies' ids."""
    request_id = logs.current()
    counts: dict[str, int] = {}
    for r in stored:
        cid = logs.study_id(r.study_uid)
        counts[cid] = counts.get(cid, 0) + 1
    for cid, n in counts.items():
        with logs.correlated(cid):
            log.info("STOW-RS: %d instance(s) of the study stored", n, extra={"request_id": request_id})
    return sorted(counts)


@router.post("/studies", summary="Store instances (STOW-RS)")
async def store_instances(request: Request, node: NodeDep, _: CanStoreImaging) -> JSONResponse:
    """Store Instances into any studies (PS3.18 Table 10.5.1-1, Studies)."""
    return await store(request, node, None)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS)")
async def store_study_instances(study: str, request: Request, node: NodeDep, _: CanStoreImaging) -> JSONResponse:
    """Store Instances of the study ``study``; an instance of another study fails (PS3.18 Table 10.5.1-1)."""
    return await store(request, node, study)
