"""Checks a resource passes before it is stored (FHIR R4 http.html §3.1.0.4.2, validation.html).

Three layers, cheapest first: the JSON is an object of the expected ``resourceType``; it parses as the
``fhir.resources.R4B`` model of that type (element names, cardinality, primitive formats; the R4B models
read and write R4 JSON for the types we serve); the required-bound ``status`` code is one of the R4 value
set's; and, where ``meta.profile`` claims one of our profiles, that profile's constraints
(:mod:`fhir_profiles`). Failures raise :class:`InvalidInput` (400) or :class:`Unprocessable` (422) with the
FHIRPath-style expression of the problem.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from interop.errors import InvalidInput, NotFound, Unprocessable
from interop.fhir.registry import ResourceDef, resource_def

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def parse_json(body: bytes | str) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one (json.html §2.6.2)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object (a FHIR resource)")
    return data


def served_type(type_: str) -> ResourceDef:
    """The registry entry of a type named in a URL; 404 for a type this server does not serve."""
    defn = resource_def(type_)
    if defn is None:
        raise NotFound(f"resource type '{type_}' is not supported by this server")
    return defn


def valid_id(id_: str) -> str:
    if not _ID.match(id_):
        raise InvalidInput(f"'{id_}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})", expression="Resource.id")
    return id_


def _expression(type_: str, loc: tuple[Any, ...]) -> str:
    out = type_
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("resource_type", "__root__"):
            continue
        else:
            out += f".{part}"
    return out


def validate_resource(data: dict[str, Any], expected_type: str | None = None) -> ResourceDef:
    """Check ``data`` as a resource of ``expected_type`` (or of its own ``resourceType``); return its type's
    registry entry. Raises :class:`InvalidInput` with ``expression`` set to the offending element."""
    type_ = data.get("resourceType")
    if not isinstance(type_, str):
        raise InvalidInput("the resource has no resourceType", expression="resourceType")
    if expected_type is not None and type_ != expected_type:
        raise InvalidInput(f"resourceType is '{type_}' where '{expected_type}' is expected", expression="resourceType")
    defn = resource_def(type_)
    if defn is None:
        raise InvalidInput(f"resource type '{type_}' is not supported by this server", expression="resourceType")
    try:
        get_fhir_model_class(type_).model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = _expression(type_, tuple(first.get("loc", ())))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid')}{more}", expression=where) from None
    except (ValueError, TypeError) as exc:  # fhir.resources raises plain errors for some shapes
        raise InvalidInput(f"{type_}: {exc}", expression=type_) from None
    status = data.get("status")
    if defn.statuses and status is not None and status not in defn.statuses:
        raise InvalidInput(
            f"{type_}.status '{status}' is not in the required value set ({', '.join(sorted(defn.statuses))})",
            expression=f"{type_}.status",
        )
    if data.get("id") is not None and (not isinstance(data["id"], str) or not _ID.match(data["id"])):
        raise InvalidInput(f"'{data['id']}' is not a valid FHIR id", expression=f"{type_}.id")
    _check_profiles(data)
    return defn


def _check_profiles(data: dict[str, Any]) -> None:
    from fhir_profiles import check_claimed_profiles

    problems = check_claimed_profiles(data)
    if problems:
        raise Unprocessable(
            f"{data['resourceType']} does not conform to the profile it claims: "
            + "; ".join(f"{where}: {msg}" for msg, where in problems),
            issues=[(msg, where) for msg, where in problems],
        )
