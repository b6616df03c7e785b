"""Search-index extraction: the rows a resource contributes to ``fhir_search_index``.

Each row is (param, system, value, low, high), filled per parameter type (FHIR R4 search.html §3.1.1.4):

* token: ``system`` and ``value`` = code (Coding, CodeableConcept, Identifier, code, boolean);
* reference: ``system`` = target type, ``value`` = target id (relative, absolute or ``Type/id`` forms);
* date: ``low``/``high`` = the instant range [low, high) the value covers, as epoch seconds (a date
  ``2020-03`` covers the whole month; a Period its start to end, open ends unbounded);
* string: ``value`` = the value lower-cased with accents removed (matched by prefix);
* quantity: ``low`` = ``high`` = the number, ``system``/``value`` = unit system and code.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from interop.fhir.registry import SearchParam, resource_def

#: Open ends of a Period (and of ``ne`` ranges): far outside any clinical date, and exact as floats.
NEG_INF = -1e13
POS_INF = 1e13
MAX_VALUE = 255

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@dataclass(frozen=True, slots=True)
class IndexRow:
    param: str
    system: str | None = None
    value: str | None = None
    low: float | None = None
    high: float | None = None


def date_range(text: str) -> tuple[float, float]:
    """The instant range [low, high) a FHIR date/dateTime/instant covers, in epoch seconds (datatypes.html
    §2.24.0.1: a partial date is the whole period). A time without a zone is taken as UTC. Raises ValueError."""
    m = _DATE.match(text.strip())
    if not m:
        raise ValueError(f"not a FHIR date/dateTime: {text!r}")
    y = int(m["y"])
    if m["m"] is None:
        lo = dt.datetime(y, 1, 1, tzinfo=dt.UTC)
        return lo.timestamp(), dt.datetime(y + 1, 1, 1, tzinfo=dt.UTC).timestamp()
    mo = int(m["m"])
    if m["d"] is None:
        lo = dt.datetime(y, mo, 1, tzinfo=dt.UTC)
        hi = dt.datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=dt.UTC)
        return lo.timestamp(), hi.timestamp()
    d = int(m["d"])
    if m["H"] is None:
        lo = dt.datetime(y, mo, d, tzinfo=dt.UTC)
        return lo.timestamp(), lo.timestamp() + 86400
    tz = dt.UTC
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        hh, mm = int(m["tz"][1:3]), int(m["tz"][4:6])
        tz = dt.timezone(sign * dt.timedelta(hours=hh, minutes=mm))
    sec = int(m["S"] or 0)
    base = dt.datetime(y, mo, d, int(m["H"]), int(m["M"]), min(sec, 59), tzinfo=tz).timestamp()
    if m["S"] is None:
        return base, base + 60
    if m["f"]:
        frac = m["f"][1:]
        lo = base + int(frac) / 10 ** len(frac)
        return lo, lo + 10 ** -len(frac)
    return base, base + 1


def _walk(node: Any, parts: list[str]) -> Iterator[Any]:
    """Values at a dotted path below ``node``; lists are flattened at every step."""
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, parts)
        return
    if not parts:
        yield node
        return
    if isinstance(node, dict) and parts[0] in node:
        yield from _walk(node[parts[0]], parts[1:])


def values_at(resource: dict[str, Any], path: str) -> Iterator[Any]:
    """Values of ``Type.a.b`` in a resource (the leading type name is dropped)."""
    parts = path.split(".")[1:]
    yield from _walk(resource, parts)


def normalize_string(text: str) -> str:
    """String matching is case- and accent-insensitive (search.html §3.1.1.4.7)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower().strip()[:MAX_VALUE]


def split_reference(ref: str) -> tuple[str | None, str] | None:
    """``Type/id``, ``http://base/Type/id`` or ``Type/id/_history/n`` → (Type, id); ``#x``/``urn:`` → None."""
    if not ref or ref.startswith("#") or ref.startswith("urn:"):
        return None
    parts = ref.split("?")[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return None, parts[-1]


def _token_rows(name: str, v: Any) -> Iterator[IndexRow]:
    if isinstance(v, bool):
        yield IndexRow(name, None, "true" if v else "false")
    elif isinstance(v, str):
        yield IndexRow(name, None, v[:MAX_VALUE])
    elif isinstance(v, dict):
        if "coding" in v:
            for c in v.get("coding") or []:
                yield from _token_rows(name, c)
        elif "code" in v:  # Coding
            yield IndexRow(name, (v.get("system") or None), str(v["code"])[:MAX_VALUE])
        elif "value" in v:  # Identifier
            yield IndexRow(name, (v.get("system") or None), str(v["value"])[:MAX_VALUE])


def _string_rows(name: str, v: Any) -> Iterator[IndexRow]:
    if isinstance(v, str):
        yield IndexRow(name, None, normalize_string(v))
    elif isinstance(v, dict):  # HumanName, Address: every string part
        for key in ("text", "family", "given", "prefix", "suffix", "line", "city", "state", "postalCode", "country"):
            part = v.get(key)
            for s in part if isinstance(part, list) else [part]:
                if isinstance(s, str):
                    yield IndexRow(name, None, normalize_string(s))


def _date_rows(name: str, v: Any) -> Iterator[IndexRow]:
    try:
        if isinstance(v, str):
            lo, hi = date_range(v)
            yield IndexRow(name, low=lo, high=hi)
        elif isinstance(v, dict) and ("start" in v or "end" in v):  # Period
            lo = date_range(v["start"])[0] if v.get("start") else NEG_INF
            hi = date_range(v["end"])[1] if v.get("end") else POS_INF
            yield IndexRow(name, low=lo, high=hi)
    except ValueError:
        return


def _reference_rows(param: SearchParam, v: Any) -> Iterator[IndexRow]:
    if not isinstance(v, dict) or not isinstance(v.get("reference"), str):
        return
    split = split_reference(v["reference"])
    if split is None:
        return
    type_, id_ = split
    if type_ is None:
        type_ = v.get("type")
    if param.targets and type_ not in param.targets:
        return
    yield IndexRow(param.name, type_, id_[:MAX_VALUE])


def _quantity_rows(name: str, v: Any) -> Iterator[IndexRow]:
    if isinstance(v, dict) and isinstance(v.get("value"), int | float) and not isinstance(v.get("value"), bool):
        num = float(v["value"])
        yield IndexRow(name, v.get("system"), (v.get("code") or v.get("unit")), low=num, high=num)


def index_rows(resource: dict[str, Any]) -> list[IndexRow]:
    """Every index row of a resource, for the parameters its type declares in the registry."""
    defn = resource_def(resource.get("resourceType", ""))
    if defn is None:
        return []
    rows: list[IndexRow] = []
    for param in defn.params:
        for path in param.paths:
            for v in values_at(resource, path):
                if param.kind == "token":
                    rows.extend(_token_rows(param.name, v))
                elif param.kind == "reference":
                    rows.extend(_reference_rows(param, v))
                elif param.kind == "date":
                    rows.extend(_date_rows(param.name, v))
                elif param.kind == "string":
                    rows.extend(_string_rows(param.name, v))
                elif param.kind == "quantity":
                    rows.extend(_quantity_rows(param.name, v))
    return list(dict.fromkeys(rows))  # drop duplicates, keep order
