"""An external OpenID Connect provider (``auth.external``): a second ``interop serve`` plays the hospital's
identity provider, and this node accepts its tokens by its JWKS, issuer and audience — and refuses a token
signed with a key the provider does not publish, or for another audience, or expired."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from interop.auth.tokens import SigningKey
from tests.auth.smart import PARTNER_AUDIENCE, bearer, sign_in, system_client
from tests.conftest import ServerProc


@pytest.fixture(scope="module")
def relying(node: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A node that trusts ``node`` (the package's node) as an external provider."""
    external = [{"issuer": node.base_url, "jwks_uri": f"{node.base_url}/auth/jwks", "audience": [PARTNER_AUDIENCE],
                 "role_claim": "role", "jwks_min_refresh_seconds": 0}]
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("relying") / "node",
                     extra_env={"INTEROP_AUTH__EXTERNAL": json.dumps(external)}).start()
    try:
        yield srv
    finally:
        srv.stop()


def _idp_token(idp: ServerProc, key: RSAKey | None = None, kid: str | None = None, **change: object) -> str:
    now = int(time.time())
    claims = {"iss": idp.base_url, "aud": [f"{idp.base_url}/fhir", PARTNER_AUDIENCE], "sub": "jane",
              "scope": "user/*.rs", "role": "viewer", "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex,
              **change}
    if key is None:
        return SigningKey(idp.data_dir / "signing-key.pem").sign(claims)
    return jwt.encode({"alg": "RS256", "kid": kid or key.kid}, claims, key)


def test_provider_tokens_are_accepted_with_their_scopes(node: ServerProc, relying: ServerProc) -> None:
    got = sign_in(node, "jane", scope="openid user/*.rs user/Observation.cru")
    at = got["access_token"]
    assert httpx.get(f"{relying.base_url}/fhir/Observation", headers=bearer(at)).status_code == 200
    created = httpx.post(f"{relying.base_url}/fhir/Observation", headers=bearer(at),
                         json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    assert created.status_code == 201, created.text
    assert httpx.post(f"{relying.base_url}/fhir/Patient", headers=bearer(at),
                      json={"resourceType": "Patient"}).status_code == 403
    # The provider's token is not this node's own: the relying node's own HS256 tokens work beside it.
    with system_client(relying) as c:
        assert c.get("/fhir/Observation").status_code == 200


def test_role_caps_a_provider_token(node: ServerProc, relying: ServerProc) -> None:
    """A provider token claiming more than its person's role may hold is narrowed to the role."""
    token = _idp_token(node, scope="user/*.cruds", role="viewer")
    assert httpx.get(f"{relying.base_url}/fhir/Observation", headers=bearer(token)).status_code == 200
    write = httpx.post(f"{relying.base_url}/fhir/Observation", headers=bearer(token),
                       json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    assert write.status_code == 403


@pytest.mark.parametrize(
    ("change", "why"),
    [({"aud": "http://127.0.0.1:1/fhir"}, "'aud'"),
     ({"iat": int(time.time()) - 900, "exp": int(time.time()) - 600}, "expired"),
     ({"nbf": int(time.time()) + 600}, "not yet valid")],
    ids=["other-audience", "expired", "not-yet-valid"],
)
def test_provider_token_with_bad_claims_is_refused(node: ServerProc, relying: ServerProc,
                                                   change: dict[str, object], why: str) -> None:
    got = httpx.get(f"{relying.base_url}/fhir/Observation", headers=bearer(_idp_token(node, **change)))
    assert got.status_code == 401 and why in got.json()["issue"][0]["diagnostics"]
    assert 'error="invalid_token"' in got.headers["www-authenticate"]


def test_token_signed_with_a_key_the_provider_does_not_publish_is_refused(node: ServerProc,
                                                                         relying: ServerProc) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rotated-in-secret"})
    got = httpx.get(f"{relying.base_url}/fhir/Observation", headers=bearer(_idp_token(node, stranger)))
    assert got.status_code == 401
    assert "rotated-in-secret" in got.json()["issue"][0]["diagnostics"]
    # The provider's own kid on a foreign key: the signature does not verify.
    own_kid = SigningKey(node.data_dir / "signing-key.pem").kid
    forged = _idp_token(node, RSAKey.generate_key(2048), kid=own_kid)
    assert httpx.get(f"{relying.base_url}/fhir/Observation", headers=bearer(forged)).status_code == 401
    # And the good ones still pass.
    assert httpx.get(f"{relying.base_url}/fhir/Observation", headers=bearer(_idp_token(node))).status_code == 200
