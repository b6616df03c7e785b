"""Search (FHIR R4 search.html): parse the parameters, turn each into SQL over the search index.

Each parameter becomes ``fhir_resources.pk IN (SELECT resource_pk FROM fhir_search_index WHERE res_type=…
AND param=… AND <value test>)``; repeated parameters AND, comma-separated values OR (§3.1.1.3). Value
tests per type (§3.1.1.4): token ``[system]|[code]``; reference ``[Type/]id`` (absolute URLs too, and the
``:Type`` modifier); date with prefixes eq ne gt lt ge le over the value's instant range; string by
case/accent-insensitive prefix (``:exact``, ``:contains``); quantity ``[prefix]number[|system|code]``.

Date prefixes compare the parameter's range [pl, ph) with the indexed range [rl, rh): ``eq`` rl ≥ pl and
rh ≤ ph (contained); ``ne`` not eq; ``gt`` rh > ph; ``lt`` rl < pl; ``ge`` rh > pl; ``le`` rl < ph
(the HAPI FHIR reading of §3.1.1.4.2, which is also what most clients expect).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement as _CE

from interop.errors import InvalidInput
from interop.fhir.indexing import date_range, normalize_string, split_reference
from interop.fhir.models import FhirResource, FhirSearchIndex
from interop.fhir.registry import (
    COMMON_PARAMS,
    PAGING_PARAMS,
    RESOURCES,
    RESULT_PARAMS,
    ResourceDef,
    SearchParam,
    sortable,
)

DEFAULT_COUNT = 20
MAX_COUNT = 1000
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[\d-])")


@dataclass(frozen=True, slots=True)
class Include:
    """``_include=Source:param[:Target]`` or ``_revinclude=Source:param[:Target]`` (§3.1.1.5.4)."""

    source: str
    param: str
    target: str | None

    def text(self) -> str:
        return f"{self.source}:{self.param}" + (f":{self.target}" if self.target else "")


@dataclass
class SearchRequest:
    """A parsed search: the filters (as SQL), result parameters, paging keys and what was ignored."""

    defn: ResourceDef
    #: Tests on the resource row itself (``_id``, ``_lastUpdated``).
    filters: list[ColumnElement[bool]] = field(default_factory=list)
    #: Tests on index rows: (selectivity rank, parameter name, test); see :meth:`where`.
    index_tests: list[tuple[int, str, ColumnElement[bool]]] = field(default_factory=list)
    #: (name, value) pairs that were applied, in request order (for the self link).
    applied: list[tuple[str, str]] = field(default_factory=list)
    #: Parameters left out in lenient handling, with the reason.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (name, descending)
    count: int = DEFAULT_COUNT
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    snapshot: int | None = None
    after: int | None = None
    offset: int = 0

    def where(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses. The most selective index test (equality on token/reference before ranges)
        drives as ``pk IN (…)``; the others are correlated ``EXISTS`` probes of that resource's index rows,
        so a narrow parameter is never intersected with a broad one's full match set."""
        out = list(self.filters)
        for n, (_, name, test) in enumerate(sorted(self.index_tests, key=lambda t: t[0])):
            if n == 0:
                out.append(FhirResource.pk.in_(select(FhirSearchIndex.resource_pk).where(
                    FhirSearchIndex.res_type == self.defn.type, FhirSearchIndex.param == name, test)))
            else:  # probed by (resource_pk, param): ix_fhir_idx_resource
                out.append(select(FhirSearchIndex.resource_pk).where(
                    FhirSearchIndex.resource_pk == FhirResource.pk, FhirSearchIndex.param == name, test).exists())
        return out


def _split_values(value: str) -> list[str]:
    """Comma-separated alternatives; ``\\,`` is a literal comma (§3.1.1.3, §3.1.1.4.8)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",") for p in parts if p != ""]


def _prefix(value: str) -> tuple[str, str]:
    m = _PREFIX.match(value)
    if not m:
        return "eq", value
    if m.group(1) in ("sa", "eb", "ap"):
        raise InvalidInput(f"search prefix '{m.group(1)}' is not supported (supported: eq ne gt lt ge le)")
    return m.group(1), value[2:]


def _range_test(prefix: str, lo: ColumnElement[float], hi: ColumnElement[float], pl: float, ph: float
                ) -> ColumnElement[bool]:
    if prefix == "eq":
        return and_(lo >= pl, hi <= ph)
    if prefix == "ne":
        return not_(and_(lo >= pl, hi <= ph))
    if prefix == "gt":
        return hi > ph
    if prefix == "lt":
        return lo < pl
    if prefix == "ge":
        return hi > pl
    return lo < ph  # le


_RANK = {"reference": 0, "token": 1, "string": 2, "quantity": 3, "date": 4}


def _token_test(value: str) -> ColumnElement[bool]:
    if "|" in value:
        system, _, code = value.partition("|")
        tests = []
        if code:
            tests.append(FhirSearchIndex.value == code)
        tests.append(FhirSearchIndex.system.is_(None) if system == "" else FhirSearchIndex.system == system)
        return and_(*tests)
    return FhirSearchIndex.value == value


def _reference_test(param: SearchParam, value: str, target: str | None) -> ColumnElement[bool]:
    split = split_reference(value)
    if split is None:
        raise InvalidInput(f"'{value}' is not a reference this server can match", expression=param.name)
    type_, id_ = split
    type_ = type_ or target or (param.targets[0] if len(param.targets) == 1 else None)
    test = FhirSearchIndex.value == id_
    return and_(test, FhirSearchIndex.system == type_) if type_ else test


def _date_bounds(value: str, name: str) -> tuple[float, float]:
    try:
        return date_range(value)
    except ValueError:
        raise InvalidInput(f"{name}: '{value}' is not a FHIR date/dateTime", expression=name) from None


def _quantity_test(value: str, name: str) -> ColumnElement[bool]:
    prefix, rest = _prefix(value)
    number, _, unit = rest.partition("|")
    try:
        num = float(number)
    except ValueError:
        raise InvalidInput(f"{name}: '{number}' is not a number", expression=name) from None
    # A decimal's implicit precision is half its last digit (§3.1.1.4.1); eq means within it.
    decimals = len(number.split(".")[1]) if "." in number else 0
    half = 0.5 * 10 ** -decimals
    test = _range_test(prefix, FhirSearchIndex.low, FhirSearchIndex.high, num - half, num + half)  # type: ignore[arg-type]
    if prefix in ("gt", "lt", "ge", "le"):  # compare with the number itself
        test = {"gt": FhirSearchIndex.low > num, "lt": FhirSearchIndex.low < num,
                "ge": FhirSearchIndex.low >= num, "le": FhirSearchIndex.low <= num}[prefix]
    if unit:
        system, _, code = unit.partition("|")
        unit_tests: list[ColumnElement[bool]] = [FhirSearchIndex.value == code] if code else []
        if system:
            unit_tests.append(FhirSearchIndex.system == system)
        test = and_(test, *unit_tests)
    return test


def _to_datetime(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _common_filter(name: str, modifier: str | None, values: list[str]) -> ColumnElement[bool]:
    if modifier:
        raise InvalidInput(f"modifier ':{modifier}' is not supported on {name}", expression=name)
    if name == "_id":
        return FhirResource.res_id.in_(values)
    tests = []
    for v in values:  # _lastUpdated: the column is an instant, so its range is a point
        prefix, text = _prefix(v)
        pl, ph = _date_bounds(text, name)
        col = FhirResource.last_updated
        lo, hi = _to_datetime(pl), _to_datetime(ph)
        tests.append({"eq": and_(col >= lo, col < hi), "ne": or_(col < lo, col >= hi), "gt": col >= hi,
                      "lt": col < lo, "ge": col >= lo, "le": col < hi}[prefix])
    return or_(*tests)


def param_filter(defn: ResourceDef, name: str, modifier: str | None, raw: str
                 ) -> tuple[int, str, ColumnElement[bool]] | ColumnElement[bool]:
    """The SQL test for one ``name[:modifier]=raw`` parameter of a search on ``defn``: a test on the
    resource row, or (rank, name, test on its index rows); raises :class:`InvalidInput` for a value that
    can't be read, :class:`KeyError` for an unknown parameter or modifier."""
    values = _split_values(raw)
    if not values:
        raise InvalidInput(f"search parameter '{name}' has no value", expression=name)
    if name in ("_id", "_lastUpdated"):
        return _common_filter(name, modifier, values)
    param = defn.param(name)
    if param is None:
        raise KeyError(name)
    target: str | None = None
    if modifier is not None:
        allowed = {"string": {"exact", "contains"}, "token": set(), "date": set(), "quantity": set(),
                   "reference": set(RESOURCES)}[param.kind]
        if modifier not in allowed:
            raise KeyError(f"{name}:{modifier}")
        target = modifier if param.kind == "reference" else None
    tests: list[ColumnElement[bool]] = []
    for v in values:
        if param.kind == "token":
            tests.append(_token_test(v))
        elif param.kind == "reference":
            tests.append(_reference_test(param, v, target))
        elif param.kind == "date":
            prefix, text = _prefix(v)
            pl, ph = _date_bounds(text, name)
            tests.append(_range_test(prefix, FhirSearchIndex.low, FhirSearchIndex.high, pl, ph))  # type: ignore[arg-type]
        elif param.kind == "string":
            norm = normalize_string(v).replace("%", r"\%").replace("_", r"\_")
            if modifier == "exact":
                tests.append(FhirSearchIndex.value == norm)
            elif modifier == "contains":
                tests.append(FhirSearchIndex.value.like(f"%{norm}%", escape="\\"))
            else:
                tests.append(FhirSearchIndex.value.like(f"{norm}%", escape="\\"))
        else:
            tests.append(_quantity_test(v, name))
    rank = _RANK[param.kind] + (5 if any(v.startswith(("ne", "gt", "lt", "ge", "le")) for v in values) else 0)
    return rank, name, or_(*tests)


def _include(value: str, name: str) -> Include:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise KeyError(f"{name}={value}")
    source, param = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    sdef = RESOURCES.get(source)
    p = sdef.param(param) if sdef else None
    if p is None or p.kind != "reference" or (target is not None and target not in RESOURCES):
        raise KeyError(f"{name}={value}")
    return Include(source, param, target)


def _int(name: str, value: str, lo: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, not '{value}'", expression=name) from None
    if n < lo:
        raise InvalidInput(f"{name} must be at least {lo}", expression=name)
    return n


def parse_search(defn: ResourceDef, params: list[tuple[str, str]], *, strict: bool) -> SearchRequest:
    """Parse ``params`` (in order) for a search on ``defn``. With ``strict`` an unknown or unsupported
    parameter raises :class:`InvalidInput` (400); otherwise it is ignored and listed in ``ignored``
    (search.html §3.1.1.2, the ``Prefer: handling`` header)."""
    req = SearchRequest(defn)

    def unknown(key: str, why: str) -> None:
        if strict:
            raise InvalidInput(f"unknown or unsupported search parameter '{key}': {why}", expression=key)
        req.ignored.append((key, why))

    for key, value in params:
        name, _, modifier = key.partition(":")
        try:
            if name == "_count":
                req.count = min(_int(name, value, 0), MAX_COUNT)
            elif name == "_sort":
                for item in value.split(","):
                    desc = item.startswith("-")
                    sname = item.lstrip("-")
                    if sname not in sortable(defn):
                        raise KeyError(f"_sort={item}")
                    req.sort.append((sname, desc))
            elif name == "_include":
                if modifier:
                    raise KeyError(key)
                req.includes.append(_include(value, key))
            elif name == "_revinclude":
                if modifier:
                    raise KeyError(key)
                req.revincludes.append(_include(value, key))
            elif name in ("_snapshot", "_after", "_offset"):
                setattr(req, name[1:], _int(name, value, 0))
                continue
            elif name in RESULT_PARAMS:
                continue  # _total, _format, _pretty: accepted, no effect (total is always computed)
            else:
                got = param_filter(defn, name, modifier or None, value)
                if isinstance(got, tuple):
                    req.index_tests.append(got)
                else:
                    req.filters.append(got)
            req.applied.append((key, value))
        except KeyError as exc:
            unknown(str(exc.args[0]) if exc.args[0] != name else key, "not supported for " + defn.type)
    return req


def _sort_column(defn: ResourceDef, name: str) -> _CE[object]:
    if name == "_id":
        return FhirResource.res_id  # type: ignore[return-value]
    if name == "_lastUpdated":
        return FhirResource.last_updated  # type: ignore[return-value]
    return (  # a date parameter: the earliest instant the resource's values cover
        select(func.min(FhirSearchIndex.low))
        .where(FhirSearchIndex.resource_pk == FhirResource.pk, FhirSearchIndex.param == name)
        .scalar_subquery()
    )


def order_by(req: SearchRequest) -> list[Any]:
    """ORDER BY for the request; always ends with ``pk`` so pages are stable."""
    out: list[Any] = []
    for name, desc in req.sort:
        col = _sort_column(req.defn, name)
        out.append(col.desc() if desc else col.asc())
    out.append(FhirResource.pk.asc())
    return out


__all__ = ["COMMON_PARAMS", "PAGING_PARAMS", "Include", "SearchRequest", "order_by", "param_filter",
           "parse_search"]
