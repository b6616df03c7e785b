"""What the DICOMweb route modules share: the base URL, Accept, look-ups that 404, DICOM JSON responses."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from interop.api.deps import check_study_patient
from interop.auth import Principal
from interop.dicomweb.dicomjson import base_url
from interop.dicomweb.media import DICOM_JSON, MediaRange, parse_accept
from interop.errors import NotAcceptable, NotFound
from interop.node import Node
from interop.store.instances import StoredInstance


def dicomweb_base(request: Request, node: Node) -> str:
    return base_url(request, node.settings.http.public_url)


def accept_ranges(request: Request) -> list[MediaRange]:
    """The Accept query parameter (PS3.18 §8.3.3.1) if given, else the Accept header."""
    return parse_accept(request.query_params.get("accept") or request.headers.get("accept"))


def require_json(ranges: list[MediaRange]) -> None:
    """Refuse (406) unless DICOM JSON is acceptable (PS3.18 §8.7.3.2; XML is not offered)."""
    for r in ranges:
        part = r.part_type if r.is_multipart else r.type
        if part in ("*/*", "*", "application/*", DICOM_JSON, "application/json"):
            return
    raise NotAcceptable("this resource is available as application/dicom+json only")


def locate(node: Node, who: Principal, study: str, series: str | None = None,
           sop: str | None = None) -> list[StoredInstance]:
    """The stored instances under a study / series / instance URL that ``who`` may read: :class:`NotFound`
    (404) when none, :class:`Forbidden` (403) for another patient's study and a ``patient/``-scoped token."""
    found = node.store.locate(study, series, sop)
    if not found:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFound(f"{what} not found")
    check_study_patient(node, who, study)
    return found


def dicom_json(body: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=DICOM_JSON)
