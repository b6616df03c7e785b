"""The DICOM JSON Model (PS3.18 Annex F) with Bulk Data URIs, and the URLs we put in it.

:func:`to_dicom_json` writes a data set as DICOM JSON; values of bulk VRs (OB, OD, OF, OL, OV, OW, UN)
longer than :data:`BULK_THRESHOLD` become a ``BulkDataURI`` (PS3.18 §F.2.7) naming the value by its
tag path inside the instance (``00420011``, ``00540016/0/00181072``…), which the bulkdata resource
resolves (PS3.18 §10.4.1.1.5). Values are never loaded to decide that: the raw element's length is enough.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from interop.errors import InvalidInput, NotFound

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Bulk values longer than this many bytes are sent by reference.
BULK_THRESHOLD = 1024
PIXEL_DATA = 0x7FE00010

Json = dict[str, Any]


def base_url(request: Request, public_url: str | None) -> str:
    """The DICOMweb root as clients reach it: ``http.public_url`` if set, else from the request."""
    root = (public_url or str(request.base_url)).rstrip("/")
    return f"{root}/dicomweb"


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


def _vr_of(ds: Dataset, tag: BaseTag, raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if vr == "OB or OW":
        return "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
    return str(vr).split(" ")[0]


def _length(raw: Any) -> int:
    if isinstance(raw, RawDataElement):
        return int(raw.length) if raw.length != 0xFFFFFFFF else 1 << 62
    value = getattr(raw, "value", None)
    return len(value) if isinstance(value, bytes | bytearray) else 0


def to_dicom_json(ds: Dataset, bulk_uri: Callable[[str], str] | None = None, path: str = "") -> Json:
    """``ds`` as a DICOM JSON object; with ``bulk_uri`` (tag path → URI) large bulk values are references."""
    out: Json = {}
    for tag in sorted(ds.keys()):
        raw = ds.get_item(tag)
        key = f"{int(tag):08X}"
        vr = _vr_of(ds, tag, raw)
        if vr in BULK_VRS and bulk_uri is not None and _length(raw) > BULK_THRESHOLD:
            out[key] = {"vr": vr, "BulkDataURI": bulk_uri(path + key)}
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            items = [to_dicom_json(item, bulk_uri, f"{path}{key}/{i}/") for i, item in enumerate(elem.value or [])]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            out[key] = elem.to_json_dict(None, BULK_THRESHOLD)
    return out


def resolve_bulk_path(ds: Dataset, path: str) -> bytes:
    """The value of the bulk element at ``path`` (``tag`` or ``tag/item/tag/…``); :class:`InvalidInput` if bad."""
    steps = [s for s in path.strip("/").split("/") if s]
    if not steps or len(steps) % 2 == 0:
        raise InvalidInput(f"bad bulk data path {path!r}", expression="bulkdata")
    current: Dataset = ds
    try:
        for i in range(0, len(steps) - 1, 2):
            current = current[int(steps[i], 16)].value[int(steps[i + 1])]
        elem = current[int(steps[-1], 16)]
    except (KeyError, IndexError, TypeError):
        raise NotFound(f"no bulk data at {path!r}") from None
    except ValueError:
        raise InvalidInput(f"bad bulk data path {path!r}", expression="bulkdata") from None
    value = elem.value
    if not isinstance(value, bytes | bytearray):
        raise InvalidInput(f"{path} is not a bulk data element", expression="bulkdata")
    return bytes(value)
