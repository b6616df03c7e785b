"""Roles of people and the SMART scopes a person of each role may hold (issue 6: radiologists and physicians
sign, technologists store images, viewers read, admins configure).

A user's token carries the requested scopes narrowed to the client's allowed scopes and to the role's
(:func:`interop.auth.scopes.narrow`); a ``user/`` permission here also covers the same ``patient/`` one.
"""

from __future__ import annotations

from typing import get_args

from interop.auth.scopes import Scope, parse_scopes
from interop.config import Role

#: Every role, in the order a list shows them.
ROLES: tuple[str, ...] = get_args(Role)

#: Writing a report, its Observations, the follow-up proposals and the sign-off Task is what signing does.
_SIGNER = "user/*.rs user/DiagnosticReport.cru user/Observation.cru user/ServiceRequest.cru user/Task.cru"

#: role -> the scopes a person of that role may hold (SMART v2 text).
ROLE_SCOPES: dict[str, str] = {
    "radiologist": _SIGNER,
    "physician": _SIGNER,
    # Images in: DICOM store (STOW-RS) is ImagingStudy create; ImagingStudy update for corrections.
    "technologist": "user/*.rs user/ImagingStudy.cru",
    "viewer": "user/*.rs",
    # Everything, configuration included (the routing/destination API asks for ``*`` update).
    "admin": "user/*.cruds",
}

#: The roles whose verdict on an AI result counts as a physician's sign-off.
SIGNING_ROLES: tuple[str, ...] = ("radiologist", "physician")


def role_scopes(role: str | None) -> list[Scope]:
    """The resource scopes a person of ``role`` may hold; none for an unknown role or no role."""
    return parse_scopes(ROLE_SCOPES.get(role or "", ""))


def check_roles(roles: tuple[str, ...]) -> None:
    """Raise ``ValueError`` for a name that is not a role (a typo in code must not lock everyone out)."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"unknown role(s) {unknown or '(none given)'}; roles are {', '.join(ROLES)}")
