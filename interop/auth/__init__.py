"""Who may call the node: bearer tokens (this node's and external OpenID Connect providers'), SMART v2 scopes,
roles of people and the patient compartment. The built-in authorization server is
:mod:`interop.auth.server` (its HTTP face: :mod:`interop.api.oauth`)."""

from interop.auth.compartment import compartment_filter
from interop.auth.roles import ROLES, SIGNING_ROLES
from interop.auth.scopes import Scope, allows, parse_scopes
from interop.auth.tokens import InsufficientScope, InvalidToken, Principal, TokenService

__all__ = [
    "ROLES",
    "SIGNING_ROLES",
    "InsufficientScope",
    "InvalidToken",
    "Principal",
    "Scope",
    "TokenService",
    "allows",
    "compartment_filter",
    "parse_scopes",
]
