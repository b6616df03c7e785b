"""SMART App Launch 2.x scopes (``context/resource.permissions``), with v1 ``read``/``write`` accepted.

``patient/Observation.rs``, ``user/*.cruds``, ``system/ImagingStudy.read`` … (SMART 2.0 §Scopes for
requesting clinical data). Permissions: c create, r read, u update, d delete, s search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Za-z]+)\.(\*|read|write|c?r?u?d?s?)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True, slots=True)
class Scope:
    context: str
    resource: str
    permissions: frozenset[str]


def parse_scopes(text: str) -> list[Scope]:
    """Parse a space-separated scope string; non-resource scopes (``openid``, ``launch`` …) are skipped."""
    out: list[Scope] = []
    for raw in text.split():
        m = _SCOPE.match(raw)
        if not m or not m.group(3):
            continue
        perms = _V1.get(m.group(3), m.group(3))
        out.append(Scope(m.group(1), m.group(2), frozenset(perms)))
    return out


def allows(scopes: list[Scope], resource: str, permission: str) -> bool:
    """True when some scope grants ``permission`` (one of c r u d s) on ``resource``."""
    return any(s.resource in ("*", resource) and permission in s.permissions for s in scopes)
