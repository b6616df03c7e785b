"""Bearer tokens refused at the node's API: no token, expired, wrong audience, wrong issuer, bad signature
→ 401 with an OperationOutcome and an RFC 6750 §3 challenge; wrong scope → 403. And ``interop token`` (HS256,
scripts and tests) keeps working beside the authorization server's RS256 tokens."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from interop.auth.tokens import SigningKey
from tests.auth.smart import bearer, cli
from tests.conftest import ServerProc


@functools.cache
def _key(path: Path) -> SigningKey:
    return SigningKey(path)


def _own(node: ServerProc, **change: Any) -> str:
    """An RS256 token signed with the node's own key, with ``change`` applied to good claims."""
    now = int(time.time())
    claims = {"iss": node.base_url, "aud": f"{node.base_url}/fhir", "sub": "jane", "scope": "user/*.rs",
              "client_id": "interop-worklist", "role": "viewer", "iat": now, "exp": now + 300,
              "jti": uuid.uuid4().hex, **change}
    return _key(node.data_dir / "signing-key.pem").sign({k: v for k, v in claims.items() if v is not None})


def _foreign_key(node: ServerProc) -> str:
    kid = _key(node.data_dir / "signing-key.pem").kid
    now = int(time.time())
    return jwt.encode({"alg": "RS256", "kid": kid}, {"iss": node.base_url, "aud": f"{node.base_url}/fhir",
                                                      "sub": "jane", "scope": "user/*.cruds", "exp": now + 300},
                      RSAKey.generate_key(2048))


BAD: dict[str, Callable[[ServerProc], str]] = {
    "expired": lambda n: _own(n, iat=int(time.time()) - 600, exp=int(time.time()) - 120),
    "wrong-audience": lambda n: _own(n, aud="http://other.example/fhir"),
    "wrong-issuer": lambda n: _own(n, iss="http://idp.example"),
    "no-subject": lambda n: _own(n, sub=None),
    "bad-signature": _foreign_key,
    "hs256-other-secret": lambda n: jwt.encode({"alg": "HS256"}, {"iss": "interop", "aud": "interop", "sub": "x",
                                                                  "scope": "system/*.cruds",
                                                                  "exp": int(time.time()) + 60},
                                               OctKey.import_key(b"z" * 64)),
    "alg-none": lambda n: "eyJhbGciOiJub25lIn0." + _own(n).split(".")[1] + ".",
    "garbage": lambda n: "not-a-token",
}


def test_a_good_own_token_is_accepted(node: ServerProc) -> None:
    assert httpx.get(f"{node.base_url}/fhir/Observation", headers=bearer(_own(node))).status_code == 200


@pytest.mark.parametrize("make", BAD.values(), ids=BAD.keys())
def test_bad_token_gets_401_with_outcome_and_invalid_token_challenge(node: ServerProc,
                                                                     make: Callable[[ServerProc], str]) -> None:
    token = make(node)
    for path in ("/fhir/Observation", "/dicomweb/studies", "/api/reports"):
        got = httpx.get(f"{node.base_url}{path}", headers=bearer(token))
        assert got.status_code == 401, (path, got.text)
        assert got.headers["content-type"].startswith("application/fhir+json")
        outcome = got.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "login"
        assert got.headers["www-authenticate"].startswith('Bearer realm="interop", error="invalid_token"')


def test_no_token_gets_401_with_a_bare_challenge(node: ServerProc) -> None:
    got = httpx.get(f"{node.base_url}/fhir/Observation")
    assert got.status_code == 401 and got.json()["resourceType"] == "OperationOutcome"
    assert got.headers["www-authenticate"] == 'Bearer realm="interop"'  # RFC 6750 §3.1: no error code


def test_wrong_scope_gets_403_with_insufficient_scope(node: ServerProc) -> None:
    got = httpx.get(f"{node.base_url}/fhir/Observation", headers=bearer(_own(node, scope="user/Patient.rs")))
    assert got.status_code == 403 and got.json()["issue"][0]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in got.headers["www-authenticate"]


def test_public_paths_need_no_token(node: ServerProc) -> None:
    for path in ("/healthz", "/fhir/metadata", "/fhir/.well-known/smart-configuration",
                 "/.well-known/openid-configuration", "/auth/jwks"):
        assert httpx.get(f"{node.base_url}{path}").status_code == 200, path


def test_interop_token_still_works_and_can_name_a_person(node: ServerProc) -> None:
    with node.client() as c:  # tests/conftest.py's HS256 token from `interop token`
        assert c.get("/fhir/Observation").status_code == 200
    out = cli(node, "token", "--subject", "dr-x", "--name", "Dr X", "--role", "radiologist", "--scope",
              "user/*.rs")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    claims = jwt.decode(token, OctKey.import_key((node.data_dir / "secret.key").read_bytes().strip())).claims
    assert (claims["sub"], claims["name"], claims["role"], claims["scope"]) == ("dr-x", "Dr X", "radiologist",
                                                                                 "user/*.rs")
    assert httpx.get(f"{node.base_url}/fhir/Observation", headers=bearer(token)).status_code == 200
