"""Our FHIR R4 profiles and the checker that holds resources to them on write.

``structuredefinitions/`` holds the StructureDefinitions (constraints on DiagnosticReport, Observation and
ServiceRequest for AI results, DESIGN.md promise 5), ``valuesets/`` the value sets they bind to, and
``examples/`` one conforming instance of each. :func:`check_claimed_profiles` is what the FHIR store calls:
a resource is checked against each of our profiles its ``meta.profile`` claims.

This is **not** a full StructureDefinition validator (no snapshot generation, slicing, invariants/FHIRPath,
extensions, or profiles other than ours). It checks exactly the kinds of constraint our differentials use,
on top-level elements (``Type.element``):

* cardinality: ``min`` / ``max``;
* ``fixed[x]``: every value equals it;
* ``pattern[x]``: at least one repetition contains it (our patterns sit on repeating ``category`` elements,
  where that is what a pattern-discriminated slice with ``min`` 1 means);
* ``binding`` with strength ``required`` to one of our ValueSets (enumerated ``compose.include.concept``);
* ``type.targetProfile`` of a Reference: the referenced resource type is one the profile allows.

Loading refuses a StructureDefinition that uses anything else, so a constraint is never silently skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CANONICAL_BASE = "http://interop.example.org/fhir"

__all__ = ["CANONICAL_BASE", "Profile", "check", "check_claimed_profiles", "profile_url", "profiles"]

Problem = tuple[str, str]  # (message, FHIRPath expression)

_KNOWN_KEYS = {"id", "path", "min", "max", "binding", "type", "short", "definition", "comment", "mustSupport"}


@dataclass(frozen=True)
class Profile:
    url: str
    type: str
    elements: tuple[dict[str, Any], ...]


def profile_url(name: str) -> str:
    """Canonical URL of one of our profiles, e.g. ``profile_url("ai-diagnostic-report")``."""
    return f"{CANONICAL_BASE}/StructureDefinition/{name}"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@cache
def _value_sets() -> dict[str, set[tuple[str | None, str]]]:
    out: dict[str, set[tuple[str | None, str]]] = {}
    for path in sorted((HERE / "valuesets").glob("*.json")):
        vs = _load(path)
        codes = {(inc.get("system"), c["code"]) for inc in vs["compose"]["include"] for c in inc["concept"]}
        out[vs["url"]] = codes
    return out


@cache
def profiles() -> dict[str, Profile]:
    """Our profiles by canonical URL (each StructureDefinition checked for constraints we can enforce)."""
    out: dict[str, Profile] = {}
    for path in sorted((HERE / "structuredefinitions").glob("*.json")):
        sd = _load(path)
        elements = tuple(sd["differential"]["element"])
        for el in elements:
            extra = {k for k in el if not (k in _KNOWN_KEYS or k.startswith(("fixed", "pattern")))}
            if extra or el["path"].count(".") != 1:
                raise ValueError(f"{path.name}: element {el['path']} uses {sorted(extra) or 'a nested path'}, "
                                 "which this checker does not enforce")
            binding = el.get("binding")
            if binding and (binding.get("strength") != "required" or binding["valueSet"] not in _value_sets()):
                raise ValueError(f"{path.name}: {el['path']} binding must be required to one of our ValueSets")
        out[sd["url"]] = Profile(sd["url"], sd["type"], elements)
    return out


def _values(resource: dict[str, Any], path: str) -> list[Any]:
    v = resource.get(path.split(".", 1)[1])
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _contains(value: Any, pattern: Any) -> bool:
    """``value`` has everything ``pattern`` has (FHIR pattern[x] semantics, profiling.html §5.1.0.5)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _contains(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(v, p) for v in value) for p in pattern)
    return bool(value == pattern)


def _codes(value: Any) -> list[tuple[str | None, str]]:
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, dict):
        codings = value.get("coding", [value])
        return [(c.get("system"), c["code"]) for c in codings if isinstance(c, dict) and "code" in c]
    return []


def _ref_type(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if isinstance(ref, str) and "/" in ref and not ref.startswith(("urn:", "#")):
        parts = ref.split("/")
        return parts[-4] if len(parts) >= 4 and parts[-2] == "_history" else parts[-2]
    t = value.get("type")
    return t if isinstance(t, str) else None


def check(resource: dict[str, Any], profile: Profile) -> list[Problem]:
    """Every way ``resource`` breaks ``profile``'s constraints (empty when it conforms)."""
    if resource.get("resourceType") != profile.type:
        return [(f"profile {profile.url} is for {profile.type}", "resourceType")]
    problems: list[Problem] = []
    for el in profile.elements:
        path = el["path"]
        values = _values(resource, path)
        if len(values) < int(el.get("min", 0)):
            problems.append((f"{path} is required (min {el['min']}) by {profile.url}", path))
        if el.get("max", "*") != "*" and len(values) > int(el["max"]):
            problems.append((f"{path} allows at most {el['max']} value(s)", path))
        where = [f"{path}[{i}]" if isinstance(resource.get(path.split(".", 1)[1]), list) else path
                 for i in range(len(values))]
        for key, want in el.items():
            if key.startswith("fixed"):
                problems += [(f"{path} must be {json.dumps(want)}, not {json.dumps(v)}", where[i])
                             for i, v in enumerate(values) if v != want]
            elif key.startswith("pattern") and values and not any(_contains(v, want) for v in values):
                problems.append((f"{path} must include {json.dumps(want)}", path))
        binding = el.get("binding")
        if binding:
            allowed = _value_sets()[binding["valueSet"]]
            allowed_codes = {code for _, code in allowed}
            for i, v in enumerate(values):  # a bare code (no system) matches by code
                if not any((sys is None and code in allowed_codes) or (sys, code) in allowed
                           for sys, code in _codes(v)):
                    problems.append((f"{path} must be one of {', '.join(sorted(allowed_codes))} "
                                     f"({binding['valueSet']})", where[i]))
        targets = [t.rsplit("/", 1)[-1] for ty in el.get("type", []) for t in ty.get("targetProfile", [])]
        problems += [(f"{path} must reference {' or '.join(targets)}", where[i])
                     for i, v in enumerate(values) if targets and _ref_type(v) not in targets]
    return problems


def check_claimed_profiles(resource: dict[str, Any]) -> list[Problem]:
    """Check ``resource`` against each of our profiles its ``meta.profile`` names; others are not ours to
    check and are left alone (validation.html §5.1.0.4: claiming a profile is a statement of conformance)."""
    claimed = (resource.get("meta") or {}).get("profile") or []
    known = profiles()
    problems: list[Problem] = []
    for url in claimed:
        if isinstance(url, str) and url.split("|")[0] in known:
            problems.extend(check(resource, known[url.split("|")[0]]))
    return problems
