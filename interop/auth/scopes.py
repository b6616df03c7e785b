"""SMART App Launch 2.x scopes (``context/resource.permissions``), with v1 ``read``/``write`` accepted.

``patient/Observation.rs``, ``user/*.cruds``, ``system/ImagingStudy.read`` … (SMART 2.0 §Scopes for
requesting clinical data). Permissions: c create, r read, u update, d delete, s search.

Granular scopes with parameters (``patient/Observation.rs?category=laboratory``, SMART 2.0 §Finer-grained
resource constraints) are not enforced by this node, so they grant nothing here (never more than asked).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Za-z]+)\.(\*|read|write|c?r?u?d?s?)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
#: The SMART v2 order of permissions in a scope's text.
PERMISSIONS = "cruds"


@dataclass(frozen=True, slots=True)
class Scope:
    context: str
    resource: str
    permissions: frozenset[str]

    def text(self) -> str:
        """The SMART v2 text of this scope (``user/Observation.rs``)."""
        return f"{self.context}/{self.resource}.{''.join(p for p in PERMISSIONS if p in self.permissions)}"


def parse_scopes(text: str) -> list[Scope]:
    """Parse a space-separated scope string; non-resource scopes (``openid``, ``launch`` …) and granular
    scopes (with ``?`` parameters) are skipped."""
    out: list[Scope] = []
    for raw in text.split():
        m = _SCOPE.match(raw)
        if not m or not m.group(3) or m.group(4):
            continue
        perms = _V1.get(m.group(3), m.group(3))
        out.append(Scope(m.group(1), m.group(2), frozenset(perms)))
    return out


def other_scopes(text: str) -> list[str]:
    """The scopes of ``text`` that are not resource scopes (``openid``, ``fhirUser``, ``launch/patient``,
    ``offline_access`` …), in order, each once."""
    out: list[str] = []
    for raw in text.split():
        if not _SCOPE.match(raw) and raw not in out:
            out.append(raw)
    return out


def allows(scopes: list[Scope], resource: str, permission: str) -> bool:
    """True when some scope grants ``permission`` (one of c r u d s) on ``resource``."""
    return any(s.resource in ("*", resource) and permission in s.permissions for s in scopes)


def _covers(allowed: str, requested: str) -> bool:
    """A ``user/`` permission covers the same permission for the patient in context (patient data is a part of
    what the user may see); ``system/`` and ``patient/`` cover only themselves."""
    return allowed == requested or (allowed == "user" and requested == "patient")


def narrow(requested: Iterable[Scope], allowed: Iterable[Scope]) -> list[Scope]:
    """What of ``requested`` ``allowed`` permits: per requested scope, the permissions and resource types it
    shares with each allowed scope of a covering context (``user/*.cruds`` narrowed by ``user/*.rs`` is
    ``user/*.rs``; ``patient/*.rs`` narrowed by ``user/Observation.cruds`` is ``patient/Observation.rs``)."""
    allowed = list(allowed)
    out: list[Scope] = []
    for r in requested:
        for a in allowed:
            if not _covers(a.context, r.context):
                continue
            if a.resource == "*":
                resource = r.resource
            elif r.resource in ("*", a.resource):
                resource = a.resource
            else:
                continue
            perms = r.permissions & a.permissions
            if perms:
                out.append(Scope(r.context, resource, perms))
    return simplify(out)


def simplify(scopes: Iterable[Scope]) -> list[Scope]:
    """One scope per context and resource type (permissions merged), without those a wildcard scope of the
    same context already grants in full; first-seen order."""
    merged: dict[tuple[str, str], set[str]] = {}
    for s in scopes:
        merged.setdefault((s.context, s.resource), set()).update(s.permissions)
    out: list[Scope] = []
    for (context, resource), perms in merged.items():
        wildcard = merged.get((context, "*"))
        if resource != "*" and wildcard is not None and perms <= wildcard:
            continue
        out.append(Scope(context, resource, frozenset(perms)))
    return out


def scope_text(scopes: Iterable[Scope], others: Iterable[str] = ()) -> str:
    """The space-separated scope string: the non-resource scopes first, then the resource scopes (v2 text)."""
    return " ".join([*others, *(s.text() for s in scopes)])
