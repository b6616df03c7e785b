"""The built-in authorization server for a single-box install: SMART App Launch 2.x over OAuth 2.0.

* Authorization code grant (RFC 6749 §4.1) with PKCE S256 (RFC 7636; required of public clients), SMART's
  ``aud`` check, EHR launch context (``launch`` → ``patient``), a login session shared by clients (SSO);
* refresh tokens (RFC 6749 §6) bound to their client, rotated on every use, the whole family revoked when a
  used one comes back (RFC 9700 §4.14.2), revocable (RFC 7009);
* client credentials (RFC 6749 §4.4) for SMART Backend Services with ``private_key_jwt`` (RFC 7523 §2.2);
* OpenID Connect Core §3.1 ID tokens with SMART's ``fhirUser`` claim.

What is granted is the requested scope narrowed to the client's allowed scopes and, for a person, to the
scopes of the person's role (:mod:`interop.auth.roles`). Access tokens are RS256 JWTs
(:meth:`interop.auth.tokens.TokenService.sign`).

From authlib this uses the RFC 6749 error classes (codes, bodies, the error redirect of §4.1.2.1), the PKCE
S256 transform and the RFC 7523 client-assertion authenticator (subclassed: joserfc only accepts RS384/ES384,
the algorithms SMART Backend Services names, when asked for them, and SMART caps ``exp`` at five minutes). Its
framework-bound ``AuthorizationServer``/grant classes are not used: SMART's ``aud`` check, launch context, the
role-capped grant, rotating refresh tokens and the SSO session would each be hooks overriding most of them.

Pure of HTTP: the router (:mod:`interop.api.oauth`) hands in request parameters and the node's base URL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
    UnsupportedResponseTypeError,
)
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from interop.auth import models as m
from interop.auth.passwords import dummy_hash, hash_secret, token_hash, verify_secret
from interop.auth.roles import ROLES, role_scopes
from interop.auth.scopes import Scope, narrow, other_scopes, parse_scopes, scope_text
from interop.auth.tokens import TokenService
from interop.config import AuthServerSettings
from interop.store.db import Database

#: Client assertion algorithms (SMART Backend Services: RS384 and ES384; RS256/ES256 also taken).
ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
#: SMART caps a client assertion's lifetime at five minutes (Backend Services §Authenticating to the token endpoint).
ASSERTION_MAX_SECONDS = 300
#: The non-resource scopes this server understands.
CONTEXT_SCOPES = ("openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access", "online_access")
#: What a public client may ask for unless registered otherwise: the launch scopes and any patient/user
#: resource scope (a person's role narrows it further).
DEFAULT_PUBLIC_SCOPES = " ".join([*CONTEXT_SCOPES, "patient/*.cruds", "user/*.cruds"])
#: A backend client (client credentials) is read-only unless registered with more.
DEFAULT_BACKEND_SCOPES = "system/*.rs"
#: The two browser apps served by this node (created at start-up when missing).
DEFAULT_CLIENTS: dict[str, list[str]] = {
    "interop-worklist": ["/", "/index.html", "/launch.html"],
    "interop-ohif": ["/ohif/callback", "/ohif/"],
}
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR id (R4 datatypes §id)


def _text(message: str) -> str:
    """An ``error_description`` without the characters RFC 6749 §5.2 excludes (``"`` and ``\\``, controls)."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" for c in message)


class UntrustedRedirect(Exception):
    """An authorization request whose client or redirect URI can't be trusted: RFC 6749 §4.1.2.1 says to
    tell the user, never to redirect."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class UserInfo:
    username: str
    display_name: str
    role: str
    active: bool
    fhir_user: str | None


@dataclass(frozen=True)
class ClientInfo:
    client_id: str
    public: bool
    redirect_uris: tuple[str, ...]
    scopes: str
    jwks: dict[str, Any] | None
    secret_hash: str | None
    active: bool

    @property
    def kind(self) -> str:
        return "public" if self.public else "private_key_jwt" if self.jwks else "client_secret"

    def redirect_uri_for(self, uri: str, base_url: str) -> str | None:
        """``uri`` when it is registered (exact match, RFC 6749 §3.1.2.3; a path-only registration is taken
        relative to ``base_url``), else None."""
        for registered in self.redirect_uris:
            full = f"{base_url.rstrip('/')}{registered}" if registered.startswith("/") else registered
            if uri == full:
                return uri
        return None

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """authlib's ClientMixin hook: which token endpoint authentication this client uses."""
        return {"private_key_jwt": self.jwks is not None,
                "client_secret_basic": self.secret_hash is not None,
                "client_secret_post": self.secret_hash is not None,
                "none": self.public}.get(method, False)


def _user_info(u: m.User) -> UserInfo:
    return UserInfo(u.username, u.display_name, u.role, u.active, u.fhir_user)


def _client_info(c: m.Client) -> ClientInfo:
    return ClientInfo(c.client_id, c.public, tuple(json.loads(c.redirect_uris or "[]")), c.scopes,
                      json.loads(c.jwks) if c.jwks else None, c.secret_hash, c.active)


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request (RFC 6749 §4.1.1 with PKCE and SMART's ``aud``/``launch``)."""

    client: ClientInfo
    redirect_uri: str
    state: str | None
    #: The requested scope narrowed to the client's allowed scopes (the user's role narrows it further).
    scope: str
    code_challenge: str | None
    aud: str
    patient: str | None
    nonce: str | None
    prompt: str | None
    #: The request's parameters, to carry through the login form.
    params: dict[str, str]

    def error(self, err: OAuth2Error) -> OAuth2Error:
        """``err`` as a redirect to the client (RFC 6749 §4.1.2.1)."""
        err.redirect_uri = self.redirect_uri
        err.state = self.state
        return err


class _ClientAssertion(JWTBearerClientAssertion):
    """RFC 7523 §3 client authentication with the SMART Backend Services rules."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: AuthorizationServer, audiences: list[str]) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.server = server
        self.audiences = audiences

    def get_audiences(self) -> list[str]:
        return self.audiences

    def resolve_client_public_key(self, client: ClientInfo) -> KeySet:
        if not client.jwks:
            raise InvalidClientError(description="the client has no registered keys (private_key_jwt)",
                                     status_code=401)
        return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=_text(f"client assertion not verified: {exc}"),
                                     status_code=401) from exc
        self.verify_claims(token.claims)
        return dict(token.claims)

    def verify_claims(self, claims: Any) -> None:
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp > self.server.clock() + ASSERTION_MAX_SECONDS + self.leeway:
            raise InvalidClientError(description="client assertion exp is more than 5 minutes ahead",
                                     status_code=401)
        super().verify_claims(claims)

    def validate_jti(self, claims: Any, jti: str) -> bool:
        return self.server.remember_assertion(str(claims["iss"]), str(jti), int(claims["exp"]))


class _FormRequest:
    """The little of an OAuth2Request that authlib's client authenticator reads."""

    def __init__(self, form: Mapping[str, str]) -> None:
        self.form = dict(form)
        self.client: ClientInfo | None = None


class AuthorizationServer:
    def __init__(self, db: Database, tokens: TokenService, settings: AuthServerSettings, *, token_ttl: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.tokens = tokens
        self.settings = settings
        self.token_ttl = token_ttl
        self.clock = clock
        self._defaults_done = False
        self._lock = threading.Lock()

    def now(self) -> int:
        return int(self.clock())

    # -- users, clients, launches (the CLI) ----------------------------------------------------------------

    def add_user(self, username: str, *, role: str, password: str, display_name: str | None = None,
                 fhir_user: str | None = None) -> UserInfo:
        if not _USERNAME.match(username):
            raise ValueError("a user name is 1-64 letters, digits and . _ @ - (starting with a letter or digit)")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        if fhir_user is not None and not re.match(r"^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)/"
                                                  r"[A-Za-z0-9\-.]{1,64}$", fhir_user):
            raise ValueError("fhirUser is a reference such as Practitioner/123")
        row = m.User(username=username, display_name=display_name or username, role=role,
                     password_hash=hash_secret(password), active=True, fhir_user=fhir_user)
        try:
            with self.db.writing() as s:
                s.add(row)
        except IntegrityError:
            raise ValueError(f"user {username!r} exists") from None
        return _user_info(row)

    def users(self) -> list[UserInfo]:
        with self.db.reading() as s:
            return [_user_info(u) for u in s.scalars(select(m.User).order_by(m.User.username))]

    def user(self, username: str) -> UserInfo | None:
        with self.db.reading() as s:
            u = s.scalars(select(m.User).where(m.User.username == username)).first()
            return _user_info(u) if u else None

    def set_active(self, username: str, active: bool) -> None:
        """Enable or disable a user; disabling also ends their login sessions and refresh tokens."""
        now = self.now()
        with self.db.writing() as s:
            done = s.execute(update(m.User).where(m.User.username == username)
                             .values(active=active, updated_at=m.utcnow()))
            if not done.rowcount:  # type: ignore[attr-defined]
                raise ValueError(f"no user {username!r}")
            if not active:
                s.execute(update(m.LoginSession).where(m.LoginSession.username == username,
                                                       m.LoginSession.revoked_at.is_(None)).values(revoked_at=now))
                s.execute(update(m.RefreshToken).where(m.RefreshToken.username == username,
                                                       m.RefreshToken.revoked_at.is_(None)).values(revoked_at=now))

    def add_client(self, client_id: str, *, redirect_uris: list[str], public: bool = False,
                   jwks: dict[str, Any] | None = None, secret: str | None = None, scopes: str | None = None
                   ) -> ClientInfo:
        """Register a client: public (PKCE), or confidential with a JWKS (``private_key_jwt``) or a secret."""
        if not _CLIENT_ID.match(client_id):
            raise ValueError("a client id is 1-128 letters, digits and . _ : -")
        if sum((public, jwks is not None, secret is not None)) != 1:
            raise ValueError("a client is public, or has a JWKS, or has a secret (exactly one)")
        for uri in redirect_uris:
            parts = urlsplit(uri)
            if parts.fragment or not (uri.startswith("/") or (parts.scheme in ("http", "https") and parts.netloc)):
                raise ValueError(f"redirect URI {uri!r}: an absolute http(s) URI or a path, without a fragment")
        if public and not redirect_uris:
            raise ValueError("a public client needs at least one redirect URI")
        if jwks is not None:
            try:
                keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"not a JSON Web Key Set: {exc}") from None
            if not keys.keys or any(k.is_private for k in keys.keys):
                raise ValueError("the JWKS must hold the client's public keys (and no private key)")
        if scopes is None:
            scopes = DEFAULT_PUBLIC_SCOPES if public or redirect_uris else ""
            if not public:
                scopes = f"{scopes} {DEFAULT_BACKEND_SCOPES}".strip()
        row = m.Client(client_id=client_id, public=public, redirect_uris=json.dumps(redirect_uris),
                       scopes=" ".join(scopes.split()), jwks=json.dumps(jwks) if jwks is not None else None,
                       secret_hash=hash_secret(secret) if secret is not None else None, active=True)
        try:
            with self.db.writing() as s:
                s.add(row)
        except IntegrityError:
            raise ValueError(f"client {client_id!r} exists") from None
        return _client_info(row)

    def clients(self) -> list[ClientInfo]:
        with self.db.reading() as s:
            return [_client_info(c) for c in s.scalars(select(m.Client).order_by(m.Client.client_id))]

    def client(self, client_id: str | None) -> ClientInfo | None:
        if not client_id:
            return None
        with self.db.reading() as s:
            c = s.scalars(select(m.Client).where(m.Client.client_id == client_id)).first()
            return _client_info(c) if c is not None and c.active else None

    def ensure_default_clients(self) -> None:
        """Create the public clients of the worklist and OHIF when missing (once per process)."""
        if self._defaults_done or not self.settings.default_clients:
            return
        with self._lock:
            if self._defaults_done:
                return
            existing = {c.client_id for c in self.clients()}
            for client_id, uris in DEFAULT_CLIENTS.items():
                if client_id not in existing:
                    with contextlib.suppress(ValueError):  # another process made it in between
                        self.add_client(client_id, redirect_uris=uris, public=True)
            self._defaults_done = True

    def create_launch(self, patient: str, *, ttl: int | None = None) -> str:
        """A launch id carrying ``patient`` as context (SMART EHR launch), usable for ``launch_ttl_seconds``."""
        if not _PATIENT_ID.match(patient):
            raise ValueError("the patient is a FHIR resource id (letters, digits, - and ., at most 64)")
        launch = secrets.token_urlsafe(24)
        with self.db.writing() as s:
            s.add(m.Launch(launch_hash=token_hash(launch), patient=patient,
                           expires_at=self.now() + (ttl or self.settings.launch_ttl_seconds)))
        return launch

    def _launch_patient(self, launch: str) -> str | None:
        with self.db.reading() as s:
            row = s.get(m.Launch, token_hash(launch))
            return row.patient if row is not None and row.expires_at > self.now() else None

    # -- login and the SSO session --------------------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> UserInfo | None:
        """The active user with that name and password, else None (same time taken for an unknown name)."""
        with self.db.reading() as s:
            u = s.scalars(select(m.User).where(m.User.username == username)).first()
        if u is None:
            verify_secret(password, dummy_hash())
            return None
        if not verify_secret(password, u.password_hash) or not u.active:
            return None
        return _user_info(u)

    def start_session(self, user: UserInfo) -> tuple[str, int]:
        """A new login session: (the cookie value, its lifetime in seconds)."""
        value = secrets.token_urlsafe(32)
        now = self.now()
        with self.db.writing() as s:
            s.add(m.LoginSession(session_hash=token_hash(value), username=user.username, auth_time=now,
                                 expires_at=now + self.settings.session_ttl_seconds))
        return value, self.settings.session_ttl_seconds

    def session_user(self, value: str | None) -> tuple[UserInfo, int] | None:
        """The active user of a live session and when they logged in, else None."""
        if not value:
            return None
        with self.db.reading() as s:
            row = s.get(m.LoginSession, token_hash(value))
            if row is None or row.revoked_at is not None or row.expires_at <= self.now():
                return None
            u = s.scalars(select(m.User).where(m.User.username == row.username)).first()
            return (_user_info(u), row.auth_time) if u is not None and u.active else None

    def end_session(self, value: str | None) -> None:
        if value:
            with self.db.writing() as s:
                s.execute(update(m.LoginSession).where(m.LoginSession.session_hash == token_hash(value))
                          .values(revoked_at=self.now()))

    # -- the authorization endpoint (RFC 6749 §4.1.1) ---------------------------------------------------------

    def validate_authorization_request(self, params: Mapping[str, str], base_url: str) -> AuthorizationRequest:
        """Check an authorization request. :class:`UntrustedRedirect` when the client or its redirect URI can't
        be trusted; otherwise errors are :class:`OAuth2Error` carrying the redirect (RFC 6749 §4.1.2.1)."""
        self.ensure_default_clients()
        client = self.client(params.get("client_id"))
        if client is None:
            raise UntrustedRedirect(f"unknown client {params.get('client_id')!r}")
        redirect_uri = client.redirect_uri_for(params.get("redirect_uri", ""), base_url)
        if redirect_uri is None:
            raise UntrustedRedirect(f"redirect_uri {params.get('redirect_uri')!r} is not registered for "
                                    f"client {client.client_id!r}")
        state = params.get("state") or None

        def fail(err: OAuth2Error) -> OAuth2Error:
            err.redirect_uri, err.state = redirect_uri, state
            return err

        if params.get("response_type") != "code":
            raise fail(UnsupportedResponseTypeError(params.get("response_type")))
        challenge = params.get("code_challenge") or None
        method = params.get("code_challenge_method") or None
        if challenge is None and client.public:
            raise fail(InvalidRequestError("code_challenge (PKCE, RFC 7636) is required of public clients"))
        if challenge is not None and method != "S256":
            raise fail(InvalidRequestError("code_challenge_method must be S256"))
        if challenge is not None and not re.match(r"^[A-Za-z0-9\-._~]{43,128}$", challenge):
            raise fail(InvalidRequestError("code_challenge is not a base64url S256 value"))
        aud = (params.get("aud") or "").rstrip("/")
        if not aud:
            raise fail(InvalidRequestError("aud (the FHIR server the token is for) is required"))
        if aud not in self.tokens.audiences_for(base_url):
            raise fail(InvalidRequestError(_text(f"aud {aud} is not this FHIR server "
                                                 f"({self.tokens.audiences_for(base_url)[0]})")))
        patient = None
        launch = params.get("launch")
        if launch:
            patient = self._launch_patient(launch)
            if patient is None:
                raise fail(InvalidRequestError("unknown or expired launch"))
        requested = params.get("scope", "")
        allowed = client.scopes
        resources = narrow(parse_scopes(requested), parse_scopes(allowed))
        others = [s for s in other_scopes(requested) if s in other_scopes(allowed) and s in CONTEXT_SCOPES]
        if not launch:
            others = [s for s in others if s != "launch"]
        if patient is None:  # no patient picker: standalone launch/patient gets no patient context
            others = [s for s in others if s != "launch/patient"]
        if not resources and not others:
            raise fail(InvalidScopeError(_text(f"none of the requested scopes ({requested}) may be granted "
                                               f"to {client.client_id}")))
        prompt = params.get("prompt") or None
        return AuthorizationRequest(client=client, redirect_uri=redirect_uri, state=state,
                                    scope=scope_text(resources, others), code_challenge=challenge, aud=aud,
                                    patient=patient, nonce=params.get("nonce") or None, prompt=prompt,
                                    params={k: v for k, v in params.items() if k in _AUTHORIZE_PARAMS})

    def issue_code(self, req: AuthorizationRequest, user: UserInfo, auth_time: int) -> str:
        """An authorization code for ``user``; returns the redirect URL carrying it (RFC 6749 §4.1.2)."""
        code = secrets.token_urlsafe(32)
        with self.db.writing() as s:
            s.add(m.AuthorizationCode(
                code_hash=token_hash(code), client_id=req.client.client_id, username=user.username,
                redirect_uri=req.redirect_uri, scope=grant_for_person(req.scope, user.role),
                code_challenge=req.code_challenge, audience=req.aud, patient=req.patient, nonce=req.nonce,
                auth_time=auth_time, expires_at=self.now() + self.settings.code_ttl_seconds))
        query = {"code": code, **({"state": req.state} if req.state else {})}
        sep = "&" if urlsplit(req.redirect_uri).query else "?"
        return f"{req.redirect_uri}{sep}{urlencode(query)}"

    # -- the token endpoint (RFC 6749 §3.2) ---------------------------------------------------------------------

    def token(self, form: Mapping[str, str], authorization: str | None, base_url: str) -> dict[str, Any]:
        """A token response (RFC 6749 §5.1 with SMART's launch context), or :class:`OAuth2Error` (§5.2)."""
        self.ensure_default_clients()
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            raise UnsupportedGrantTypeError(grant_type)
        client = self._authenticate_client(form, authorization, base_url)
        if grant_type == "authorization_code":
            return self._code_grant(form, client, base_url)
        if grant_type == "refresh_token":
            return self._refresh_grant(form, client, base_url)
        return self._client_credentials(form, client, base_url)

    def token_urls(self, base_url: str) -> list[str]:
        """The token endpoint's URL(s): the ``aud`` a client assertion must name (RFC 7523 §3 item 3)."""
        urls = [f"{base_url.rstrip('/')}/auth/token", f"{self.tokens.issuer_for(base_url)}/auth/token"]
        return list(dict.fromkeys(urls))

    def _authenticate_client(self, form: Mapping[str, str], authorization: str | None, base_url: str
                             ) -> ClientInfo:
        """RFC 6749 §2.3: ``private_key_jwt`` (RFC 7523), ``client_secret_basic``/``_post``, or ``none`` for a
        public client (which only names itself)."""
        client: ClientInfo | None
        if form.get("client_assertion_type") or form.get("client_assertion"):
            if form.get("client_assertion_type") != JWTBearerClientAssertion.CLIENT_ASSERTION_TYPE:
                raise InvalidClientError(description="client_assertion_type must be jwt-bearer (RFC 7523)",
                                         status_code=401)
            req = _FormRequest(form)
            client = _ClientAssertion(self, self.token_urls(base_url))(self.client, req)
            if client is None:
                raise InvalidClientError(description="a client assertion is required", status_code=401)
        elif authorization and authorization.lower().startswith("basic "):
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
                client_id, secret = (unquote(p.replace("+", " ")) for p in raw.split(":", 1))
            except (ValueError, UnicodeDecodeError):
                raise InvalidClientError(description="malformed Basic credentials", status_code=401) from None
            client = self._secret_client(client_id, secret)
        elif form.get("client_secret"):
            client = self._secret_client(form.get("client_id", ""), form["client_secret"])
        else:
            client = self.client(form.get("client_id"))
            if client is None:
                raise InvalidClientError(description="unknown client", status_code=401)
            if not client.public:
                raise InvalidClientError(description=f"client {client.client_id} must authenticate "
                                                     f"({client.kind})", status_code=401)
        if form.get("client_id") and form["client_id"] != client.client_id:
            raise InvalidClientError(description="client_id does not match the client's credentials",
                                     status_code=401)
        return client

    def _secret_client(self, client_id: str, secret: str) -> ClientInfo:
        client = self.client(client_id)
        if client is None or client.secret_hash is None or not verify_secret(secret, client.secret_hash):
            err = InvalidClientError(description="client authentication failed", status_code=401)
            raise err
        return client

    def remember_assertion(self, client_id: str, jti: str, exp: int) -> bool:
        """Record a client assertion's ``jti``; False when it was used before (RFC 7523 §3 item 7)."""
        now = self.now()
        try:
            with self.db.writing() as s:
                s.execute(delete(m.AssertionId).where(m.AssertionId.expires_at < now - 60))
                s.add(m.AssertionId(client_id=client_id, jti=jti[:256], expires_at=exp))
        except IntegrityError:
            return False
        return True

    def _code_grant(self, form: Mapping[str, str], client: ClientInfo, base_url: str) -> dict[str, Any]:
        code = form.get("code")
        if not code:
            raise InvalidRequestError("code is required")
        h = token_hash(code)
        now = self.now()
        with self.db.reading() as s:
            row = s.get(m.AuthorizationCode, h)
        if row is None:
            raise InvalidGrantError("unknown authorization code")
        if row.used_at is not None:
            self._revoke_family(h)
            raise InvalidGrantError("authorization code already used; the tokens issued for it are revoked")
        if row.expires_at <= now:
            raise InvalidGrantError("authorization code expired")
        if row.client_id != client.client_id:
            raise InvalidGrantError("authorization code was issued to another client")
        if form.get("redirect_uri") != row.redirect_uri:
            raise InvalidGrantError("redirect_uri does not match the authorization request")
        if row.code_challenge is not None:
            verifier = form.get("code_verifier") or ""
            if not re.match(r"^[A-Za-z0-9\-._~]{43,128}$", verifier) or \
                    create_s256_code_challenge(verifier) != row.code_challenge:
                raise InvalidGrantError("code_verifier does not match the code_challenge (PKCE)")
        with self.db.writing() as s:
            taken = s.execute(update(m.AuthorizationCode).where(m.AuthorizationCode.code_hash == h,
                                                                m.AuthorizationCode.used_at.is_(None))
                              .values(used_at=now))
            if not taken.rowcount:  # type: ignore[attr-defined]
                raise InvalidGrantError("authorization code already used")
        user = self.user(row.username)
        if user is None or not user.active:
            raise InvalidGrantError("the user is disabled")
        scope = grant_for_person(row.scope, user.role)
        return self._respond(client, user, scope=scope, aud=row.audience, patient=row.patient, nonce=row.nonce,
                             auth_time=row.auth_time, family=h, base_url=base_url)

    def _refresh_grant(self, form: Mapping[str, str], client: ClientInfo, base_url: str) -> dict[str, Any]:
        value = form.get("refresh_token")
        if not value:
            raise InvalidRequestError("refresh_token is required")
        h = token_hash(value)
        now = self.now()
        with self.db.reading() as s:
            row = s.get(m.RefreshToken, h)
        if row is None or row.client_id != client.client_id:
            raise InvalidGrantError("unknown refresh token")
        if row.revoked_at is not None:
            raise InvalidGrantError("refresh token revoked")
        if row.used_at is not None:
            self._revoke_family(row.family)
            raise InvalidGrantError("refresh token already used; every token of this grant is revoked")
        if row.expires_at <= now:
            raise InvalidGrantError("refresh token expired")
        user = self.user(row.username)
        if user is None or not user.active:
            raise InvalidGrantError("the user is disabled")
        scope = grant_for_person(row.scope, user.role)
        if form.get("scope"):  # RFC 6749 §6: never more than originally granted
            scope = scope_text(narrow(parse_scopes(form["scope"]), parse_scopes(scope)),
                               [s for s in other_scopes(form["scope"]) if s in other_scopes(scope)])
        with self.db.writing() as s:
            taken = s.execute(update(m.RefreshToken).where(m.RefreshToken.token_hash == h,
                                                           m.RefreshToken.used_at.is_(None),
                                                           m.RefreshToken.revoked_at.is_(None))
                              .values(used_at=now))
            if not taken.rowcount:  # type: ignore[attr-defined]
                raise InvalidGrantError("refresh token already used")
        return self._respond(client, user, scope=scope, aud=row.audience, patient=row.patient, nonce=None,
                             auth_time=row.auth_time, family=row.family, base_url=base_url,
                             refresh_expires=None if "offline_access" in scope.split() else row.expires_at)

    def _client_credentials(self, form: Mapping[str, str], client: ClientInfo, base_url: str) -> dict[str, Any]:
        if client.public:
            raise UnauthorizedClientError("client_credentials is for confidential clients")
        requested = form.get("scope") or client.scopes
        granted = [s for s in narrow(parse_scopes(requested), parse_scopes(client.scopes)) if s.context == "system"]
        if not granted:
            raise InvalidScopeError(_text(f"none of the requested scopes ({requested}) may be granted to "
                                          f"{client.client_id} (system/ scopes it is registered for)"))
        scope = scope_text(granted)
        now = self.now()
        claims = {"iss": self.tokens.issuer_for(base_url), "aud": _aud(self.tokens.audiences_for(base_url)),
                  "sub": client.client_id, "client_id": client.client_id, "scope": scope, "iat": now,
                  "exp": now + self.token_ttl, "jti": uuid.uuid4().hex}
        return {"access_token": self.tokens.sign(claims, typ="at+jwt"), "token_type": "Bearer",
                "expires_in": self.token_ttl, "scope": scope}

    def _respond(self, client: ClientInfo, user: UserInfo, *, scope: str, aud: str, patient: str | None,
                 nonce: str | None, auth_time: int, family: str, base_url: str,
                 refresh_expires: int | None = None) -> dict[str, Any]:
        """The token response for a person: access token, refresh token (``offline_access``/``online_access``),
        ID token (``openid``) and launch context."""
        now = self.now()
        issuer = self.tokens.issuer_for(base_url)
        words = scope.split()
        claims: dict[str, Any] = {
            "iss": issuer, "aud": _aud([aud, *self.tokens.server_audiences]), "sub": user.username,
            "name": user.display_name, "role": user.role, "scope": scope, "client_id": client.client_id,
            "iat": now, "exp": now + self.token_ttl, "jti": uuid.uuid4().hex,
        }
        if patient:
            claims["patient"] = patient
        if user.fhir_user:
            claims["fhirUser"] = user.fhir_user
        out: dict[str, Any] = {"access_token": self.tokens.sign(claims, typ="at+jwt"), "token_type": "Bearer",
                               "expires_in": self.token_ttl, "scope": scope}
        if patient:
            out["patient"] = patient
            out["need_patient_banner"] = True
        if "offline_access" in words or "online_access" in words:
            refresh = secrets.token_urlsafe(32)
            if refresh_expires is None:
                ttl = self.settings.refresh_ttl_seconds if "offline_access" in words else \
                    self.settings.session_ttl_seconds
                refresh_expires = now + ttl
            with self.db.writing() as s:
                s.add(m.RefreshToken(token_hash=token_hash(refresh), family=family, client_id=client.client_id,
                                     username=user.username, scope=scope, audience=aud, patient=patient,
                                     auth_time=auth_time, expires_at=refresh_expires))
            out["refresh_token"] = refresh
        if "openid" in words:
            id_claims: dict[str, Any] = {"iss": issuer, "sub": user.username, "aud": client.client_id,
                                         "iat": now, "exp": now + self.token_ttl, "auth_time": auth_time,
                                         "name": user.display_name}
            if nonce:
                id_claims["nonce"] = nonce
            if "fhirUser" in words and user.fhir_user:
                id_claims["fhirUser"] = f"{base_url.rstrip('/')}/fhir/{user.fhir_user}"
            out["id_token"] = self.tokens.sign(id_claims)
        return out

    def _revoke_family(self, family: str) -> None:
        with self.db.writing() as s:
            s.execute(update(m.RefreshToken).where(m.RefreshToken.family == family,
                                                   m.RefreshToken.revoked_at.is_(None))
                      .values(revoked_at=self.now()))

    def revoke(self, form: Mapping[str, str], authorization: str | None, base_url: str) -> None:
        """Token revocation (RFC 7009 §2.1): a refresh token of the calling client ends with its whole family;
        anything else (an access token, an unknown value) is answered the same way, with nothing to do."""
        client = self._authenticate_client(form, authorization, base_url)
        value = form.get("token")
        if not value:
            raise InvalidRequestError("token is required")
        with self.db.reading() as s:
            row = s.get(m.RefreshToken, token_hash(value))
        if row is not None and row.client_id == client.client_id:
            self._revoke_family(row.family)


#: Parameters of an authorization request carried through the login form.
_AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud", "code_challenge",
                     "code_challenge_method", "launch", "nonce", "prompt")


def _aud(values: list[str]) -> str | list[str]:
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else unique


def grant_for_person(scope: str, role: str) -> str:
    """``scope`` with its resource scopes narrowed to the role's (:data:`interop.auth.roles.ROLE_SCOPES`);
    the context scopes (``openid``, ``launch`` …) kept."""
    resources: list[Scope] = narrow(parse_scopes(scope), role_scopes(role))
    return scope_text(resources, other_scopes(scope))


def access_denied(req: AuthorizationRequest) -> OAuth2Error:
    """The user declined (RFC 6749 §4.1.2.1 ``access_denied``)."""
    return req.error(AccessDeniedError("the user declined"))
