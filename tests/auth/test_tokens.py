"""Token verification without servers: the authorization server's own RS256 tokens, external providers'
tokens checked against a JWKS served through an httpx mock transport (fetched once, again on an unknown
``kid``, not more often than allowed), passwords, and the ``require_role`` dependency."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from interop.api import errors, oauth
from interop.api.deps import CanSign, require_role
from interop.auth import InvalidToken, Principal, TokenService
from interop.auth.passwords import hash_secret, verify_secret
from interop.auth.tokens import SigningKey
from interop.config import ExternalIssuer

IDP = "https://idp.example"


class Jwks:
    """A provider's JWKS endpoint as an httpx transport; its keys can be rotated, its requests counted."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1"})]
        self.requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return httpx.Response(200, json={"keys": [k.as_dict(private=False) for k in self.keys]})

    def token(self, key: RSAKey | None = None, *, alg: str = "RS256", **change: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        claims = {"iss": IDP, "aud": "urn:node", "sub": "jdoe", "scope": "user/*.cruds", "iat": now,
                  "exp": now + 300, "jti": uuid.uuid4().hex, **change}
        return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def _service(jwks: Jwks, **conf: Any) -> TokenService:
    external = ExternalIssuer(issuer=IDP, jwks_uri=f"{IDP}/jwks", audience=["urn:node"], **conf)
    return TokenService(b"k" * 64, issuer="interop", audience="interop", ttl=60, external=[external],
                        http=httpx.Client(transport=httpx.MockTransport(jwks.handler)))


def test_external_keys_are_fetched_once_and_again_for_a_new_kid() -> None:
    jwks = Jwks()
    tokens = _service(jwks, jwks_min_refresh_seconds=0)
    good = jwks.token()
    assert tokens.may_fetch(good)
    assert tokens.verify(good).subject == "jdoe"
    assert tokens.verify(jwks.token()).subject == "jdoe" and jwks.requests == 1  # cached
    assert not tokens.may_fetch(good)
    # The provider rotates its key: the first token with the new kid fetches the set again.
    jwks.keys = [RSAKey.generate_key(2048, parameters={"kid": "k2"})]
    assert tokens.verify(jwks.token()).subject == "jdoe" and jwks.requests == 2
    with pytest.raises(InvalidToken, match="'k1'"):
        tokens.verify(good)  # the old key is gone from the set
    assert jwks.requests == 3


def test_unknown_kids_do_not_refetch_more_often_than_allowed() -> None:
    jwks = Jwks()
    tokens = _service(jwks, jwks_min_refresh_seconds=3600)
    tokens.verify(jwks.token())
    stranger = RSAKey.generate_key(2048, parameters={"kid": "evil"})
    for _ in range(3):
        with pytest.raises(InvalidToken, match="does not publish"):
            tokens.verify(jwks.token(stranger))
    assert jwks.requests == 1


@pytest.mark.parametrize(
    "make",
    [lambda j: j.token(aud="urn:other"), lambda j: j.token(exp=int(time.time()) - 120),
     lambda j: j.token(iss="https://other.example"), lambda j: j.token(RSAKey.generate_key(2048, parameters={
         "kid": "k1"}))],
    ids=["audience", "expired", "issuer", "signature"],
)
def test_external_tokens_with_bad_claims_or_signature_are_refused(make: Any) -> None:
    jwks = Jwks()
    with pytest.raises(InvalidToken):
        _service(jwks).verify(make(jwks))


def test_an_hmac_token_claiming_the_provider_is_not_checked_with_its_public_keys() -> None:
    jwks = Jwks()
    forged = jwt.encode({"alg": "HS256"}, {"iss": IDP, "aud": "urn:node", "sub": "x", "exp": int(time.time()) + 60},
                        OctKey.import_key(b"public-key-material-used-as-secret-xx"))
    with pytest.raises(InvalidToken):
        _service(jwks).verify(forged)
    assert jwks.requests == 0


def test_external_role_and_scope_claims_are_mapped_and_the_role_caps_the_scopes() -> None:
    jwks = Jwks()
    tokens = _service(jwks, role_claim="roles", scope_claim="scp")
    p = tokens.verify(jwks.token(roles=["staff", "viewer"], scp=["openid", "user/*.cruds"], scope=None))
    assert p.role == "viewer" and p.scope_text == "openid user/*.rs"
    with_default = _service(jwks, default_role="technologist").verify(jwks.token())
    assert with_default.role == "technologist" and with_default.scope_text == "user/*.rs user/ImagingStudy.cru"
    without = _service(jwks).verify(jwks.token())
    assert without.role is None and without.scope_text == "user/*.cruds"  # no role: the provider's grant


def test_own_rs256_tokens_check_issuer_and_audience_against_the_base_url(tmp_path: Path) -> None:
    key = SigningKey(tmp_path / "signing-key.pem")
    tokens = TokenService(b"k" * 64, issuer="interop", audience="interop", ttl=60, signing_key=key)
    now = int(time.time())
    token = key.sign({"iss": "http://node:8080", "aud": "http://node:8080/fhir", "sub": "jane",
                      "exp": now + 60, "scope": "user/*.rs"})
    assert tokens.verify(token, base_url="http://node:8080").subject == "jane"
    for base in ("http://other:8080", None):
        with pytest.raises(InvalidToken):
            tokens.verify(token, base_url=base)
    assert (tmp_path / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    again = SigningKey(tmp_path / "signing-key.pem")
    assert again.kid == key.kid  # the key pair is kept


def test_passwords_are_salted_scrypt_hashes() -> None:
    one, two = hash_secret("s3cret-pass"), hash_secret("s3cret-pass")
    assert one != two and one.startswith("scrypt$16384$8$1$")
    assert verify_secret("s3cret-pass", one) and not verify_secret("s3cret-pasS", one)
    assert not verify_secret("s3cret-pass", "garbage")


# -- require_role -----------------------------------------------------------------------------------------------


@pytest.fixture
def app() -> TestClient:
    tokens = TokenService(b"k" * 64, issuer="interop", audience="interop", ttl=60)
    api = FastAPI()
    api.state.node = SimpleNamespace(tokens=tokens, settings=SimpleNamespace(http=SimpleNamespace(public_url=None)))
    errors.install(api)
    oauth.install(api)

    @api.post("/sign")
    async def sign(p: CanSign) -> dict[str, Any]:
        return {"who": p.subject}

    @api.post("/configure")
    async def configure(p: Principal = Depends(require_role("admin"))) -> dict[str, Any]:  # noqa: B008
        return {"who": p.subject}

    client = TestClient(api)
    client.mint = tokens.mint  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize(
    ("role", "path", "status"),
    [("radiologist", "/sign", 200), ("physician", "/sign", 200), ("technologist", "/sign", 403),
     ("viewer", "/sign", 403), ("admin", "/sign", 403), (None, "/sign", 403), ("admin", "/configure", 200),
     ("radiologist", "/configure", 403)],
)
def test_require_role_lets_only_those_roles_through(app: TestClient, role: str | None, path: str,
                                                    status: int) -> None:
    token = app.mint("dr", "user/*.cruds", extra={"role": role} if role else None)  # type: ignore[attr-defined]
    got = app.post(path, headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == status, got.text
    if status == 403:
        assert got.json()["resourceType"] == "OperationOutcome"


def test_require_role_refuses_unknown_role_names() -> None:
    with pytest.raises(ValueError, match="janitor"):
        require_role("janitor")
