"""Bearer tokens this node mints and verifies (JWT, HS256, RFC 7519), through joserfc (the JOSE
library authlib itself now uses; ``authlib.jose`` is deprecated).

The signing key is ``auth.secret`` or, by default, a random key kept in ``<data_dir>/secret.key``
(created 0600 on first use), so that ``interop token`` and ``interop serve`` agree on one box.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from interop.auth.scopes import Scope, allows, parse_scopes
from interop.config import Settings
from interop.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Principal:
    """Who is calling: subject, client and granted scopes."""

    subject: str
    client_id: str | None
    scope_text: str
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def scopes(self) -> list[Scope]:
        return parse_scopes(self.scope_text)

    def require(self, resource: str, permission: str) -> None:
        """Raise :class:`Forbidden` unless a scope grants ``permission`` on ``resource``."""
        if not allows(self.scopes, resource, permission):
            raise Forbidden(f"token scope does not grant '{permission}' on {resource}")


def _load_secret(settings: Settings) -> bytes:
    if settings.auth.secret:
        return settings.auth.secret.encode()
    path: Path = settings.data_dir / "secret.key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    return path.read_bytes().strip()


class TokenService:
    def __init__(self, secret: bytes, *, issuer: str, audience: str, ttl: int) -> None:
        self._key = OctKey.import_key(secret)
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenService:
        a = settings.auth
        return cls(_load_secret(settings), issuer=a.issuer, audience=a.audience, ttl=a.token_ttl_seconds)

    def mint(
        self,
        subject: str = "admin",
        scope: str = "system/*.cruds",
        *,
        ttl: int | None = None,
        client_id: str = "interop-cli",
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + (ttl if ttl is not None else self.ttl),
            "jti": uuid.uuid4().hex,
        }
        if extra:
            claims.update(extra)
        return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, self._key)

    def verify(self, token: str) -> Principal:
        """Check signature, issuer, audience and expiry; raise :class:`Unauthorized` if any fails."""
        registry = jwt.JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"]).claims
            registry.validate(claims)
        except (JoseError, ValueError) as exc:  # bad signature, claims, or malformed token text
            raise Unauthorized(f"invalid token: {exc}") from exc
        return Principal(
            subject=str(claims["sub"]),
            client_id=claims.get("client_id"),
            scope_text=str(claims.get("scope", "")),
            claims=dict(claims),
        )
