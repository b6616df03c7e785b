"""SMART v2 scopes and the tokens this node mints."""

from __future__ import annotations

import pytest

from interop.auth import TokenService, allows, parse_scopes
from interop.errors import Forbidden, Unauthorized


def test_parse_scopes_reads_v2_and_v1_forms() -> None:
    scopes = parse_scopes("openid launch patient/Observation.rs user/*.cruds system/ImagingStudy.read")
    assert [(s.context, s.resource, "".join(sorted(s.permissions))) for s in scopes] == [
        ("patient", "Observation", "rs"),
        ("user", "*", "cdrsu"),
        ("system", "ImagingStudy", "rs"),
    ]


@pytest.mark.parametrize(
    ("scope", "resource", "perm", "expected"),
    [
        ("system/ImagingStudy.rs", "ImagingStudy", "r", True),
        ("system/ImagingStudy.rs", "ImagingStudy", "c", False),
        ("system/ImagingStudy.rs", "Observation", "r", False),
        ("system/*.c", "ImagingStudy", "c", True),
        ("user/ImagingStudy.write", "ImagingStudy", "c", True),
        ("user/ImagingStudy.write", "ImagingStudy", "r", False),
        ("openid fhirUser", "ImagingStudy", "r", False),
        ("system/ImagingStudy.xyz", "ImagingStudy", "r", False),
    ],
)
def test_allows_grants_only_what_the_scope_says(scope: str, resource: str, perm: str, expected: bool) -> None:
    assert allows(parse_scopes(scope), resource, perm) is expected


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(b"k" * 64, issuer="interop", audience="interop", ttl=60)


def test_token_round_trip_keeps_subject_and_scope(tokens: TokenService) -> None:
    p = tokens.verify(tokens.mint("dr-who", "user/ImagingStudy.rs"))
    assert p.subject == "dr-who"
    p.require("ImagingStudy", "r")
    with pytest.raises(Forbidden):
        p.require("ImagingStudy", "c")


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda t: t.mint(ttl=-60),  # expired
        lambda t: TokenService(b"k" * 64, issuer="interop", audience="elsewhere", ttl=60).mint(),  # wrong audience
        lambda t: TokenService(b"j" * 64, issuer="interop", audience="interop", ttl=60).mint(),  # wrong key
        lambda t: TokenService(b"k" * 64, issuer="other", audience="interop", ttl=60).mint(),  # wrong issuer
        lambda t: "not-a-jwt",
        lambda t: t.mint()[:-4] + "AAAA",  # tampered signature
    ],
    ids=["expired", "audience", "key", "issuer", "garbage", "tampered"],
)
def test_verify_refuses_bad_tokens(tokens: TokenService, make_bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unauthorized):
        tokens.verify(make_bad(tokens))
