"""Access tokens and SMART v2 scopes. Issue 6 adds the authorization server and OIDC; this is the core."""

from interop.auth.scopes import Scope, allows, parse_scopes
from interop.auth.tokens import Principal, TokenService

__all__ = ["Principal", "Scope", "TokenService", "allows", "parse_scopes"]
