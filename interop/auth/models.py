"""Tables of the built-in authorization server: users, clients, and the short-lived things it hands out.

Secrets are never stored: passwords as scrypt hashes (:mod:`interop.auth.passwords`), client secrets likewise,
and authorization codes, refresh tokens, session cookies and launch ids as their SHA-256. Times that are
compared on every request are whole seconds since the epoch (the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from interop.store.models import Base, utcnow

HASH = String(64)  # hex SHA-256


class User(Base):
    """A person who logs in here (SMART ``user``); ``role`` decides the scopes they may hold."""

    __tablename__ = "auth_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The FHIR resource that is this person (``Practitioner/123``): the ``fhirUser`` claim.
    fhir_user: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Client(Base):
    """A registered OAuth client (RFC 6749 §2): public (PKCE, no secret) or confidential (a JWKS for
    ``private_key_jwt``, or a hashed secret)."""

    __tablename__ = "auth_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(128), unique=True)
    public: Mapped[bool] = mapped_column(Boolean)
    #: JSON list; a path-only URI (``/launch.html``) is relative to the node's base URL.
    redirect_uris: Mapped[str] = mapped_column(Text, default="[]")
    #: Space-separated scopes the client may be granted.
    scopes: Mapped[str] = mapped_column(Text)
    #: JSON Web Key Set (RFC 7517) of the client's public keys, for ``private_key_jwt`` (RFC 7523).
    jwks: Mapped[str | None] = mapped_column(Text)
    secret_hash: Mapped[str | None] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuthorizationCode(Base):
    """An authorization code (RFC 6749 §4.1.2): single use, short-lived, bound to its client, redirect URI and
    PKCE challenge (RFC 7636 §4.4)."""

    __tablename__ = "auth_codes"

    code_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(64))
    redirect_uri: Mapped[str] = mapped_column(Text)
    #: The scopes granted (already narrowed to the client and the user's role).
    scope: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    audience: Mapped[str] = mapped_column(Text)
    patient: Mapped[str | None] = mapped_column(String(64))
    nonce: Mapped[str | None] = mapped_column(String(256))
    auth_time: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger)


class RefreshToken(Base):
    """A refresh token (RFC 6749 §6), rotated on every use; all tokens descending from one authorization code
    are one ``family``, revoked together when a used one comes back (RFC 9700 §4.14.2)."""

    __tablename__ = "auth_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    family: Mapped[str] = mapped_column(HASH)
    client_id: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(Text)
    audience: Mapped[str] = mapped_column(Text)
    patient: Mapped[str | None] = mapped_column(String(64))
    auth_time: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index("ix_auth_refresh_family", "family"),
        Index("ix_auth_refresh_user", "username"),
    )


class LoginSession(Base):
    """A login at the authorization endpoint (the SSO cookie): a second client is not asked again."""

    __tablename__ = "auth_sessions"

    session_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    auth_time: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class Launch(Base):
    """An EHR-style launch context (SMART App Launch 2.x §EHR launch: the opaque ``launch`` parameter)."""

    __tablename__ = "auth_launches"

    launch_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    patient: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AssertionId(Base):
    """A client assertion's ``jti`` already used (RFC 7523 §3 item 7: not accepted twice until it expires)."""

    __tablename__ = "auth_assertion_ids"

    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
