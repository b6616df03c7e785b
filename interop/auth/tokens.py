"""Bearer tokens this node mints and verifies (JWT, RFC 7519), through joserfc (the JOSE library authlib
itself now uses; ``authlib.jose`` is deprecated).

Three kinds, told apart by the token's ``alg`` and ``iss`` before any key is tried:

* **HS256** from ``interop token`` (scripts and tests): the key is ``auth.secret`` or a random key kept in
  ``<data_dir>/secret.key`` (created 0600 on first use), so that ``interop token`` and ``interop serve`` agree
  on one box; ``iss``/``aud`` are ``auth.issuer``/``auth.audience``.
* **RS256** from the built-in authorization server (:mod:`interop.auth.server`): the key pair is
  ``<data_dir>/signing-key.pem`` (created on first use), published at ``/auth/jwks``; ``iss`` is
  ``auth.server.issuer`` (default: this node's base URL) and ``aud`` names this node's FHIR base URL.
* tokens of an **external** OpenID Connect provider (``auth.external``): checked against its JWKS, fetched with
  httpx when first needed, cached, and fetched again (at most every ``jwks_min_refresh_seconds``) when a token
  names a ``kid`` the cache lacks, so a provider's key rotation is followed and a foreign key is refused.

Every check failure is :class:`InvalidToken` (HTTP 401 with ``WWW-Authenticate: Bearer error="invalid_token"``,
RFC 6750 §3.1); a valid token without the scope an interaction needs is :class:`InsufficientScope` (403).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey, RSAKey

from interop.auth.roles import ROLES, role_scopes
from interop.auth.scopes import Scope, allows, narrow, other_scopes, parse_scopes, scope_text
from interop.config import ExternalIssuer, Settings
from interop.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

#: Algorithms accepted from external providers: asymmetric only (an HMAC ``alg`` would let the public JWKS
#: serve as a shared secret, RFC 8725 §2.1).
EXTERNAL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


def _quoted(text: str) -> str:
    """``text`` made safe inside a quoted-string of an HTTP auth-param (RFC 6750 §3: no ``"`` or ``\\``)."""
    return "".join(c for c in text if 0x20 <= ord(c) <= 0x7E and c not in '"\\')[:200]


class InvalidToken(Unauthorized):
    """The bearer token is expired, malformed, from an untrusted issuer, for another audience, or its
    signature does not verify (RFC 6750 §3.1 ``invalid_token``; HTTP 401)."""

    @property
    def www_authenticate(self) -> str:
        return f'Bearer realm="interop", error="invalid_token", error_description="{_quoted(self.message)}"'


class InsufficientScope(Forbidden):
    """The token is valid but its scopes do not grant the interaction (RFC 6750 §3.1 ``insufficient_scope``;
    HTTP 403)."""

    @property
    def www_authenticate(self) -> str:
        return f'Bearer realm="interop", error="insufficient_scope", error_description="{_quoted(self.message)}"'


@dataclass(frozen=True)
class Principal:
    """Who is calling: subject, client and granted scopes; for a person, the role (``claims["role"]``)."""

    subject: str
    client_id: str | None
    scope_text: str
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def scopes(self) -> list[Scope]:
        return parse_scopes(self.scope_text)

    @property
    def role(self) -> str | None:
        """The person's role (one of :data:`interop.auth.roles.ROLES`), or None for a system/client token."""
        role = self.claims.get("role")
        return role if isinstance(role, str) and role in ROLES else None

    @property
    def name(self) -> str:
        """The display name for audit trails and signatures (the ``name`` claim, else the subject)."""
        return str(self.claims.get("name") or self.subject)

    @property
    def patient(self) -> str | None:
        """The patient in context (SMART launch context ``patient``), if any."""
        patient = self.claims.get("patient")
        return str(patient) if patient else None

    def require(self, resource: str, permission: str) -> None:
        """Raise :class:`InsufficientScope` unless a scope grants ``permission`` on ``resource``."""
        if not allows(self.scopes, resource, permission):
            raise InsufficientScope(f"token scope does not grant '{permission}' on {resource}")


def _create_file(path: Path, data: bytes) -> None:
    """Write ``path`` (0600) unless it exists, atomically: a reader never sees it half written, and when two
    processes race the first one's content wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process got there first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _load_secret(settings: Settings) -> bytes:
    if settings.auth.secret:
        return settings.auth.secret.encode()
    path: Path = settings.data_dir / "secret.key"
    if not path.exists():
        _create_file(path, secrets.token_hex(32).encode())
    return path.read_bytes().strip()


class SigningKey:
    """The authorization server's RS256 key pair, kept in a PEM file, loaded (or created) when first needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: RSAKey | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> RSAKey:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    if not self.path.exists():
                        _create_file(self.path, RSAKey.generate_key(2048).as_pem(private=True))
                    key = RSAKey.import_key(self.path.read_bytes())
                    self._key = RSAKey.import_key(key.as_dict(private=True, kid=key.thumbprint(), alg="RS256",
                                                              use="sig"))
        return self._key

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 §5) to publish."""
        return {"keys": [self.key.as_dict(private=False)]}

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        return jwt.encode({"alg": "RS256", "typ": typ, "kid": self.kid}, claims, self.key)


class ExternalKeys:
    """The signing keys of one external provider: fetched when first needed, cached, fetched again for a
    ``kid`` the cache lacks (at most every ``jwks_min_refresh_seconds``)."""

    def __init__(self, conf: ExternalIssuer, http: Callable[[], httpx.Client],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.conf = conf
        self._http = http
        self._clock = clock
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def would_fetch(self, kid: str | None) -> bool:
        """True when :meth:`key_set` for ``kid`` would go to the network (so a caller can do it off the event loop)."""
        if self._keys is None:
            return True
        return kid is not None and kid not in self._kids and self._may_refresh()

    def _may_refresh(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self.conf.jwks_min_refresh_seconds

    def key_set(self, kid: str | None) -> KeySet:
        with self._lock:
            if self._keys is None or (kid is not None and kid not in self._kids and self._may_refresh()):
                self._load()
            assert self._keys is not None
            return self._keys

    def _load(self) -> None:
        try:
            if self.conf.jwks_file is not None:
                data = json.loads(self.conf.jwks_file.read_text())
            else:
                assert self.conf.jwks_uri is not None
                resp = self._http().get(self.conf.jwks_uri, headers={"Accept": "application/json"})
                resp.raise_for_status()
                data = resp.json()
            keys = KeySet.import_key_set(data)
        except (OSError, ValueError, httpx.HTTPError, JoseError) as exc:
            self._fetched_at = self._clock()  # don't hammer a provider that is down
            raise InvalidToken(f"the signing keys of {self.conf.issuer} could not be read: {exc}") from exc
        self._keys = keys
        self._kids = {str(k.kid) for k in keys.keys if k.kid}
        self._fetched_at = self._clock()
        log.info("loaded %d signing key(s) of %s", len(self._kids), self.conf.issuer)


def _b64json(part: str) -> dict[str, Any]:
    value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, NOT verified (to choose how to verify it)."""
    try:
        header, payload, _ = token.split(".")
        return _b64json(header), _b64json(payload)
    except ValueError as exc:  # wrong number of parts, bad base64 or JSON
        raise InvalidToken("malformed token (not a compact JWS)") from exc


def _scope_of(claims: dict[str, Any], claim: str) -> str:
    value = claims.get(claim, "")
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _role_of(claims: dict[str, Any], conf: ExternalIssuer) -> str | None:
    value = claims.get(conf.role_claim)
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and v in ROLES:
            return v
    return conf.default_role


def capped_by_role(scope: str, role: str | None) -> str:
    """``scope`` with its resource scopes narrowed to what a person of ``role`` may hold (other scopes kept);
    unchanged without a role."""
    if role is None:
        return scope
    return scope_text(narrow(parse_scopes(scope), role_scopes(role)), other_scopes(scope))


class TokenService:
    def __init__(
        self,
        secret: bytes,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        signing_key: SigningKey | None = None,
        server_issuer: str | None = None,
        server_audiences: Sequence[str] = (),
        external: Sequence[ExternalIssuer] = (),
        http: httpx.Client | None = None,
    ) -> None:
        self._key = OctKey.import_key(secret)
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self.signing_key = signing_key
        #: ``iss`` of the RS256 tokens (None: the base URL each request came to).
        self.server_issuer = server_issuer
        self.server_audiences = list(server_audiences)
        self._http = http
        self._external = {e.issuer: ExternalKeys(e, self._client) for e in external}

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenService:
        a = settings.auth
        public = settings.http.public_url.rstrip("/") if settings.http.public_url else None
        return cls(_load_secret(settings), issuer=a.issuer, audience=a.audience, ttl=a.token_ttl_seconds,
                   signing_key=SigningKey(settings.data_dir / "signing-key.pem"),
                   server_issuer=a.server.issuer or public, server_audiences=a.server.audience,
                   external=a.external)

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=5.0, follow_redirects=True)
        return self._http

    # -- minting ----------------------------------------------------------------------------------------

    def mint(
        self,
        subject: str = "admin",
        scope: str = "system/*.cruds",
        *,
        ttl: int | None = None,
        client_id: str = "interop-cli",
        extra: dict[str, Any] | None = None,
    ) -> str:
        """An HS256 token (``interop token``); ``extra`` adds claims (``name``, ``role`` …)."""
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

    def issuer_for(self, base_url: str) -> str:
        """``iss`` of the RS256 tokens minted for a request to ``base_url``."""
        return self.server_issuer or base_url.rstrip("/")

    def audiences_for(self, base_url: str) -> list[str]:
        """The ``aud`` values an RS256 token is minted with, and accepted with, at ``base_url``: this node's
        FHIR base URL (what SMART clients send as ``aud``), then ``auth.server.audience``."""
        return [f"{base_url.rstrip('/')}/fhir", *self.server_audiences]

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        """An RS256 JWT with the authorization server's key."""
        if self.signing_key is None:
            raise RuntimeError("this token service has no signing key")
        return self.signing_key.sign(claims, typ=typ)

    def jwks(self) -> dict[str, Any]:
        return self.signing_key.jwks() if self.signing_key is not None else {"keys": []}

    # -- verifying --------------------------------------------------------------------------------------

    def may_fetch(self, token: str) -> bool:
        """True when verifying ``token`` may fetch an external provider's keys over the network."""
        try:
            header, claims = peek(token)
        except InvalidToken:
            return False
        ext = self._external.get(str(claims.get("iss")))
        return ext is not None and header.get("alg") != "HS256" and ext.would_fetch(header.get("kid"))

    def verify(self, token: str, *, base_url: str | None = None) -> Principal:
        """Check signature, issuer, audience and expiry; raise :class:`InvalidToken` if any fails.

        ``base_url`` is the node's base URL as the request reached it: the expected ``iss`` (unless
        ``auth.server.issuer`` is set) and ``aud`` of RS256 tokens."""
        header, claims = peek(token)
        alg = header.get("alg")
        if alg == "HS256":
            return self._verify_hs256(token)
        ext = self._external.get(str(claims.get("iss")))
        if ext is not None:
            return self._verify_external(token, header, ext)
        if alg == "RS256" and self.signing_key is not None and header.get("kid") == self.signing_key.kid:
            return self._verify_own(token, base_url)
        raise InvalidToken(f"tokens of issuer {str(claims.get('iss'))!r} (alg {alg}) are not accepted here")

    @staticmethod
    def _decode(token: str, key: Any, algorithms: Sequence[str], registry: jwt.JWTClaimsRegistry) -> dict[str, Any]:
        try:
            claims = dict(jwt.decode(token, key, algorithms=list(algorithms)).claims)
            registry.validate(claims)
        except (JoseError, ValueError) as exc:  # bad signature, claims, or malformed token text
            raise InvalidToken(f"invalid token: {exc}") from exc
        return claims

    def _verify_hs256(self, token: str) -> Principal:
        registry = jwt.JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        claims = self._decode(token, self._key, ["HS256"], registry)
        return Principal(
            subject=str(claims["sub"]),
            client_id=claims.get("client_id"),
            scope_text=str(claims.get("scope", "")),
            claims=claims,
        )

    def _verify_own(self, token: str, base_url: str | None) -> Principal:
        assert self.signing_key is not None
        base = base_url or self.server_issuer
        if base is None:
            raise InvalidToken("the issuer of this token can't be checked without the node's base URL")
        registry = jwt.JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": self.issuer_for(base)},
            aud={"essential": True, "values": self.audiences_for(base)},
            exp={"essential": True},
            sub={"essential": True},
        )
        claims = self._decode(token, self.signing_key.key, ["RS256"], registry)
        return Principal(subject=str(claims["sub"]), client_id=claims.get("client_id"),
                         scope_text=str(claims.get("scope", "")), claims=claims)

    def _verify_external(self, token: str, header: dict[str, Any], ext: ExternalKeys) -> Principal:
        conf = ext.conf
        if header.get("alg") not in EXTERNAL_ALGORITHMS:
            raise InvalidToken(f"alg {header.get('alg')!r} is not accepted from {conf.issuer}")
        kid = header.get("kid")
        keys = ext.key_set(kid)
        if kid is not None and kid not in {k.kid for k in keys.keys}:
            raise InvalidToken(f"the token is signed with key {kid!r}, which {conf.issuer} does not publish")
        registry = jwt.JWTClaimsRegistry(
            leeway=conf.leeway_seconds,
            iss={"essential": True, "value": conf.issuer},
            aud={"essential": True, "values": conf.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        claims = self._decode(token, keys, EXTERNAL_ALGORITHMS, registry)
        role = _role_of(claims, conf)
        scope = capped_by_role(_scope_of(claims, conf.scope_claim), role)
        claims["role"] = role
        claims["scope"] = scope
        client_id = claims.get("client_id") or claims.get("azp")
        return Principal(subject=str(claims["sub"]), client_id=str(client_id) if client_id else None,
                         scope_text=scope, claims=claims)
