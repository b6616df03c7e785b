"""SMART v2 scopes and the tokens this node mints."""

from __future__ import annotations

import pytest

from interop.auth import TokenService, allows, parse_scopes
from interop.auth.roles import ROLE_SCOPES, ROLES, role_scopes
from interop.auth.scopes import narrow, scope_text
from interop.auth.server import grant_for_person
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


def test_granular_scopes_grant_nothing() -> None:
    """``?category=…`` constraints are not enforced here, so such a scope must not grant the whole type."""
    assert parse_scopes("patient/Observation.rs?category=laboratory") == []


@pytest.mark.parametrize(
    ("requested", "allowed", "granted"),
    [
        ("user/*.cruds", "user/*.rs", "user/*.rs"),
        ("user/*.read", "user/*.cruds", "user/*.rs"),  # v1 asked, v2 given
        ("user/Observation.cruds", "user/*.rs user/Observation.cu", "user/Observation.crus"),
        ("user/*.cruds", "user/*.rs user/Task.cu", "user/*.rs user/Task.cu"),
        ("patient/*.rs", "user/Observation.cruds", "patient/Observation.rs"),  # user/ covers the patient's
        ("user/*.rs", "patient/*.cruds", ""),  # but patient/ never covers user/
        ("system/*.rs", "user/*.cruds", ""),
        ("system/Patient.r user/Patient.s", "system/*.rs user/*.rs", "system/Patient.r user/Patient.s"),
    ],
)
def test_narrow_keeps_only_what_both_grant(requested: str, allowed: str, granted: str) -> None:
    assert scope_text(narrow(parse_scopes(requested), parse_scopes(allowed))) == granted


@pytest.mark.parametrize(
    ("role", "granted"),
    [
        ("radiologist", "openid user/*.rs user/DiagnosticReport.cru user/Observation.cru user/ServiceRequest.cru "
                        "user/Task.cru"),
        ("physician", "openid user/*.rs user/DiagnosticReport.cru user/Observation.cru user/ServiceRequest.cru "
                      "user/Task.cru"),
        ("technologist", "openid user/*.rs user/ImagingStudy.cru"),
        ("viewer", "openid user/*.rs"),
        ("admin", "openid user/*.cruds"),
    ],
)
def test_role_limits_what_a_person_is_granted(role: str, granted: str) -> None:
    assert grant_for_person("openid user/*.cruds", role) == granted


def test_every_role_has_scopes_and_signers_can_update_reports() -> None:
    assert set(ROLE_SCOPES) == set(ROLES)
    for role in ROLES:
        assert allows(role_scopes(role), "Observation", "r")
    assert [r for r in ROLES if allows(role_scopes(r), "DiagnosticReport", "u")] == ["radiologist", "physician",
                                                                                   "admin"]
