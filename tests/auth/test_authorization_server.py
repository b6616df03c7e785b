"""The built-in authorization server on a running node, driven over HTTP as SMART apps drive it: the
authorization code flow with PKCE and a login form, single sign-on, refresh rotation, SMART Backend Services
with ``private_key_jwt``, role-limited grants, discovery; and the tokens it issues at the node's FHIR API."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.auth.smart import (
    PARTNER_AUDIENCE,
    Pkce,
    authorize_params,
    bearer,
    claims,
    cli,
    exchange,
    login_form,
    redirect_query,
    sign_in,
    submit_login,
)
from tests.conftest import ServerProc


@pytest.fixture
def http(node: ServerProc) -> httpx.Client:
    with httpx.Client(base_url=node.base_url, timeout=30) as c:
        yield c  # type: ignore[misc]


def _code(http: httpx.Client, node: ServerProc, pkce: Pkce, username: str = "jane", **params: str) -> str:
    page = login_form(http, authorize_params(node, pkce=pkce, **params))
    assert page.status_code == 200 and "<form" in page.text, page.text
    return redirect_query(submit_login(http, page, username))["code"]


# -- the authorization code flow -------------------------------------------------------------------------------


def test_code_flow_with_pkce_issues_tokens_that_read_fhir(node: ServerProc, http: httpx.Client) -> None:
    pkce = Pkce()
    params = authorize_params(node, pkce=pkce, scope="openid fhirUser offline_access user/*.cruds")
    page = login_form(http, params)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'autocomplete="current-password"' in page.text and "<script" not in page.text
    done = submit_login(http, page, "jane")
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"{node.base_url}/index.html?")
    sso = next(c for c in http.cookies.jar if c.name == "interop_sso")
    assert sso.has_nonstandard_attr("HttpOnly") and sso.path == "/auth"
    assert "samesite=lax" in done.headers["set-cookie"].lower()
    query = redirect_query(done)
    assert query["state"] == "xyz-state"

    got = exchange(http, node, query["code"], pkce)
    assert got.status_code == 200, got.text
    assert got.headers["cache-control"] == "no-store"
    body = got.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0 and body["refresh_token"]
    # A radiologist asking for everything gets read everywhere and write on what signing writes.
    assert body["scope"].split() == ["openid", "fhirUser", "offline_access", "user/*.rs",
                                     "user/DiagnosticReport.cru", "user/Observation.cru",
                                     "user/ServiceRequest.cru", "user/Task.cru"]
    header = json.loads(__import__("base64").urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
    assert header["alg"] == "RS256" and header["kid"]
    at = claims(node, body["access_token"])
    assert at["iss"] == node.base_url and at["aud"] == [f"{node.base_url}/fhir", PARTNER_AUDIENCE]
    assert (at["sub"], at["name"], at["role"], at["client_id"]) == ("jane", "Jane Doe", "radiologist",
                                                                    "interop-worklist")
    assert at["scope"] == body["scope"] and at["fhirUser"] == "Practitioner/jane-1"
    assert at["exp"] - at["iat"] == body["expires_in"] and at["jti"]
    idt = claims(node, body["id_token"])
    assert idt["aud"] == "interop-worklist" and idt["sub"] == "jane"
    assert idt["fhirUser"] == f"{node.base_url}/fhir/Practitioner/jane-1"

    assert httpx.get(f"{node.base_url}/fhir/Observation", headers=bearer(body["access_token"])).status_code == 200
    report = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert httpx.post(f"{node.base_url}/fhir/Observation", json=report,
                      headers=bearer(body["access_token"])).status_code == 201
    refused = httpx.post(f"{node.base_url}/fhir/Patient", json={"resourceType": "Patient"},
                         headers=bearer(body["access_token"]))
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def test_wrong_code_verifier_is_invalid_grant(node: ServerProc, http: httpx.Client) -> None:
    code = _code(http, node, Pkce())
    got = exchange(http, node, code, Pkce())
    assert got.status_code == 400 and got.json()["error"] == "invalid_grant"
    assert "PKCE" in got.json()["error_description"]


def test_reused_code_is_invalid_grant_and_revokes_what_it_gave(node: ServerProc, http: httpx.Client) -> None:
    pkce = Pkce()
    code = _code(http, node, pkce)
    first = exchange(http, node, code, pkce)
    assert first.status_code == 200
    again = exchange(http, node, code, pkce)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    refresh = http.post("/auth/token", data={"grant_type": "refresh_token", "client_id": "interop-worklist",
                                             "refresh_token": first.json()["refresh_token"]})
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


def test_token_request_with_another_redirect_uri_is_invalid_grant(node: ServerProc, http: httpx.Client) -> None:
    pkce = Pkce()
    code = _code(http, node, pkce)
    got = exchange(http, node, code, pkce, redirect="/launch.html")
    assert got.status_code == 400 and got.json()["error"] == "invalid_grant"


def test_code_of_another_client_is_invalid_grant(node: ServerProc, http: httpx.Client) -> None:
    pkce = Pkce()
    code = _code(http, node, pkce)
    got = exchange(http, node, code, pkce, client_id="interop-ohif")
    assert got.status_code == 400 and got.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(("client_id", "redirect"), [("no-such-app", "/index.html"),
                                                      ("interop-worklist", "/elsewhere.html")],
                         ids=["unknown-client", "unregistered-redirect"])
def test_untrusted_client_or_redirect_gets_an_error_page_not_a_redirect(node: ServerProc, http: httpx.Client,
                                                                        client_id: str, redirect: str) -> None:
    got = http.get("/auth/authorize", params=authorize_params(node, pkce=Pkce(), client_id=client_id,
                                                              redirect=redirect))
    assert got.status_code == 400 and "location" not in got.headers
    assert 'role="alert"' in got.text and "refused" in got.text


@pytest.mark.parametrize(
    ("change", "error"),
    [({"aud": ""}, "invalid_request"),
     ({"aud": "http://ehr.example/fhir"}, "invalid_request"),
     ({"code_challenge": "", "code_challenge_method": ""}, "invalid_request"),
     ({"code_challenge_method": "plain"}, "invalid_request"),
     ({"response_type": "token"}, "unsupported_response_type"),
     ({"scope": "system/*.cruds nonsense"}, "invalid_scope"),
     ({"launch": "no-such-launch"}, "invalid_request")],
    ids=["missing-aud", "wrong-aud", "no-pkce", "plain-pkce", "implicit", "no-grantable-scope", "unknown-launch"],
)
def test_bad_authorization_request_redirects_with_the_error(node: ServerProc, http: httpx.Client,
                                                            change: dict[str, str], error: str) -> None:
    params = {**authorize_params(node, pkce=Pkce()), **change}
    got = http.get("/auth/authorize", params={k: v for k, v in params.items() if v})
    query = redirect_query(got)
    assert got.headers["location"].startswith(f"{node.base_url}/index.html?")
    assert query["error"] == error and query["state"] == "xyz-state" and "code" not in query


def test_wrong_password_shows_the_form_again_and_a_disabled_user_cannot_sign_in(node: ServerProc,
                                                                                http: httpx.Client) -> None:
    params = authorize_params(node, pkce=Pkce())
    wrong = submit_login(http, login_form(http, params), "jane", "not her password")
    assert wrong.status_code == 401 and 'role="alert"' in wrong.text and "interop_sso" not in http.cookies
    assert cli(node, "user", "disable", "gone").returncode == 0
    listed = cli(node, "user", "list").stdout
    assert "gone\tphysician\tdisabled" in listed and "jane\tradiologist\tactive\tJane Doe\tPractitioner/jane-1" \
        in listed
    refused = submit_login(http, login_form(http, params), "gone")
    assert refused.status_code == 401


def test_login_form_without_its_csrf_cookie_is_refused(node: ServerProc) -> None:
    with httpx.Client(base_url=node.base_url) as one, httpx.Client(base_url=node.base_url) as other:
        page = login_form(one, authorize_params(node, pkce=Pkce()))
        forged = submit_login(other, page, "jane")  # another browser posting this form: no cookie
    assert forged.status_code == 400 and "location" not in forged.headers


def test_cancel_redirects_access_denied(node: ServerProc, http: httpx.Client) -> None:
    page = login_form(http, authorize_params(node, pkce=Pkce()))
    assert redirect_query(submit_login(http, page, "", "", action="deny"))["error"] == "access_denied"


def test_second_client_gets_a_code_without_a_password(node: ServerProc, http: httpx.Client) -> None:
    _code(http, node, Pkce())  # the worklist: signed in with the password
    pkce = Pkce()
    got = http.get("/auth/authorize", params=authorize_params(node, pkce=pkce, client_id="interop-ohif",
                                                              redirect="/ohif/callback", scope="openid user/*.rs"))
    assert got.status_code == 302, got.text
    assert got.headers["location"].startswith(f"{node.base_url}/ohif/callback?")
    token = exchange(http, node, redirect_query(got)["code"], pkce, redirect="/ohif/callback",
                     client_id="interop-ohif")
    assert token.status_code == 200 and claims(node, token.json()["access_token"])["sub"] == "jane"
    # prompt=login asks again; without the session prompt=none answers login_required
    assert http.get("/auth/authorize", params=authorize_params(node, pkce=Pkce(), prompt="login")).status_code == 200
    with httpx.Client(base_url=node.base_url) as fresh:
        none = fresh.get("/auth/authorize", params=authorize_params(node, pkce=Pkce(), prompt="none"))
    assert redirect_query(none)["error"] == "login_required"


def test_refresh_rotates_and_a_used_refresh_token_revokes_the_grant(node: ServerProc, http: httpx.Client) -> None:
    first = sign_in(node, "jane", http=http)

    def refresh(token: str) -> httpx.Response:
        return http.post("/auth/token", data={"grant_type": "refresh_token", "client_id": "interop-worklist",
                                              "refresh_token": token})

    second = refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert claims(node, second.json()["access_token"])["sub"] == "jane"
    replay = refresh(first["refresh_token"])  # the old one again: refused, and the whole grant revoked
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert refresh(second.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_token_is_bound_to_its_client_and_revocable(node: ServerProc, http: httpx.Client) -> None:
    got = sign_in(node, "jane", http=http)
    other = http.post("/auth/token", data={"grant_type": "refresh_token", "client_id": "interop-ohif",
                                           "refresh_token": got["refresh_token"]})
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    revoked = http.post("/auth/revoke", data={"token": got["refresh_token"], "client_id": "interop-worklist"})
    assert revoked.status_code == 200
    after = http.post("/auth/token", data={"grant_type": "refresh_token", "client_id": "interop-worklist",
                                           "refresh_token": got["refresh_token"]})
    assert after.json()["error"] == "invalid_grant"


def test_viewer_asking_for_everything_gets_read_only(node: ServerProc) -> None:
    got = sign_in(node, "vic", scope="openid user/*.cruds patient/*.cruds")
    assert got["scope"] == "openid user/*.rs patient/*.rs"
    at = got["access_token"]
    assert claims(node, at)["role"] == "viewer"
    assert httpx.get(f"{node.base_url}/fhir/DiagnosticReport", headers=bearer(at)).status_code == 200
    write = httpx.post(f"{node.base_url}/fhir/Observation", headers=bearer(at),
                       json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    assert write.status_code == 403 and write.json()["issue"][0]["code"] == "forbidden"
    assert "refresh_token" not in got and "id_token" in got


def test_technologist_may_store_images_but_not_write_reports(node: ServerProc) -> None:
    scope = sign_in(node, "tom", scope="user/*.cruds")["scope"].split()
    assert scope == ["user/*.rs", "user/ImagingStudy.cru"]


def test_userinfo_answers_for_the_signed_in_person(node: ServerProc) -> None:
    at = sign_in(node, "jane", scope="openid fhirUser user/*.rs")["access_token"]
    info = httpx.get(f"{node.base_url}/auth/userinfo", headers=bearer(at)).json()
    assert info == {"sub": "jane", "name": "Jane Doe", "role": "radiologist", "fhirUser": "Practitioner/jane-1"}


# -- SMART Backend Services ---------------------------------------------------------------------------------------


def _assertion(key: RSAKey, client_id: str, aud: str, *, exp_in: int = 240, jti: str | None = None) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"},
                      {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + exp_in,
                       "jti": jti or uuid.uuid4().hex}, key, algorithms=["RS384"])


def test_client_credentials_with_private_key_jwt(node: ServerProc, tmp_path: Path) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "backend-1"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    added = cli(node, "client", "add", "ehr-backend", "--jwks", str(jwks), "--scope", "system/*.rs system/Task.cu")
    assert added.returncode == 0, added.stderr
    listed = cli(node, "client", "list").stdout
    assert "ehr-backend\tprivate_key_jwt\t\tsystem/*.rs system/Task.cu" in listed
    # the two browser apps' clients were made at start-up
    assert "interop-worklist\tpublic\t/ /index.html /launch.html\t" in listed
    assert "interop-ohif\tpublic\t/ohif/callback /ohif/\t" in listed
    token_url = f"{node.base_url}/auth/token"

    def ask(assertion: str, scope: str = "system/Observation.rs system/Task.cruds") -> httpx.Response:
        return httpx.post(token_url, data={
            "grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion})

    jti = uuid.uuid4().hex
    got = ask(_assertion(key, "ehr-backend", token_url, jti=jti))
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["scope"] == "system/Observation.rs system/Task.crus" and "refresh_token" not in body
    at = claims(node, body["access_token"])
    assert at["sub"] == at["client_id"] == "ehr-backend" and "role" not in at
    assert httpx.get(f"{node.base_url}/fhir/Observation", headers=bearer(body["access_token"])).status_code == 200
    assert httpx.get(f"{node.base_url}/fhir/Patient", headers=bearer(body["access_token"])).status_code == 403

    replay = ask(_assertion(key, "ehr-backend", token_url, jti=jti))
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    too_long = ask(_assertion(key, "ehr-backend", token_url, exp_in=900))
    assert too_long.status_code == 401 and "5 minutes" in too_long.json()["error_description"]
    wrong_aud = ask(_assertion(key, "ehr-backend", f"{node.base_url}/fhir"))
    assert wrong_aud.status_code == 401
    stranger = RSAKey.generate_key(2048, parameters={"kid": "backend-1"})
    assert ask(_assertion(stranger, "ehr-backend", token_url)).status_code == 401
    assert ask(_assertion(key, "ehr-backend", token_url), scope="user/*.rs").json()["error"] == "invalid_scope"
    public = httpx.post(token_url, data={"grant_type": "client_credentials", "client_id": "interop-worklist"})
    assert public.status_code == 400 and public.json()["error"] == "unauthorized_client"


def test_unknown_grant_type_and_form_errors(node: ServerProc) -> None:
    url = f"{node.base_url}/auth/token"
    assert httpx.post(url, data={"grant_type": "password"}).json()["error"] == "unsupported_grant_type"
    assert httpx.post(url, json={"grant_type": "client_credentials"}).json()["error"] == "invalid_request"
    unknown = httpx.post(url, data={"grant_type": "authorization_code", "client_id": "nobody", "code": "x"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"


# -- discovery ------------------------------------------------------------------------------------------------------


def test_smart_configuration_says_what_is_supported(node: ServerProc) -> None:
    got = httpx.get(f"{node.base_url}/fhir/.well-known/smart-configuration")
    assert got.status_code == 200
    conf = got.json()
    assert conf["issuer"] == node.base_url
    assert conf["authorization_endpoint"] == f"{node.base_url}/auth/authorize"
    assert conf["token_endpoint"] == f"{node.base_url}/auth/token"
    assert conf["jwks_uri"] == f"{node.base_url}/auth/jwks"
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert set(conf["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert {"private_key_jwt", "none"} <= set(conf["token_endpoint_auth_methods_supported"])
    assert {"launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
            "context-ehr-patient", "permission-v2", "permission-patient", "permission-user",
            "sso-openid-connect"} <= set(conf["capabilities"])
    assert "context-standalone-patient" not in conf["capabilities"]  # no patient picker
    assert {"openid", "fhirUser", "launch", "offline_access", "user/*.cruds"} <= set(conf["scopes_supported"])
    oidc = httpx.get(f"{node.base_url}/.well-known/openid-configuration").json()
    assert oidc["issuer"] == node.base_url and oidc["jwks_uri"] == conf["jwks_uri"]
    assert oidc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert oidc["response_types_supported"] == ["code"] and oidc["subject_types_supported"] == ["public"]
    jwks = httpx.get(conf["jwks_uri"]).json()
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"] and "d" not in jwks["keys"][0]



def test_sign_in_and_out_are_audited_and_logout_returns_to_a_registered_uri(node: ServerProc,
                                                                            http: httpx.Client) -> None:
    """DICOM "User Authentication" AuditEvents (DCM 110114, Login 110122 / Logout 110123), a refused sign-in
    as outcome 4; the end_session_endpoint sends the browser back only to the client's registered URI."""
    assert httpx.get(f"{node.base_url}/.well-known/openid-configuration").json()["end_session_endpoint"] \
        == f"{node.base_url}/auth/logout"
    wrong = submit_login(http, login_form(http, authorize_params(node, pkce=Pkce())), "jane", "not her password")
    assert wrong.status_code == 401
    _code(http, node, Pkce())
    elsewhere = http.get("/auth/logout", params={"client_id": "interop-worklist",
                                                 "post_logout_redirect_uri": "https://evil.example/"})
    assert elsewhere.status_code == 200 and "Signed out" in elsewhere.text  # not a registered URI: no redirect
    _code(http, node, Pkce())
    back = http.get("/auth/logout", params={"client_id": "interop-worklist", "state": "s1",
                                            "post_logout_redirect_uri": f"{node.base_url}/index.html"})
    assert back.status_code == 303 and back.headers["location"] == f"{node.base_url}/index.html?state=s1"
    assert "interop_sso" not in http.cookies

    def events(code: str) -> list[dict[str, object]]:
        got = node.client("system/AuditEvent.rs").get(
            "/fhir/AuditEvent", params={"subtype": f"http://dicom.nema.org/resources/ontology/DCM|{code}",
                                        "_count": "100"})
        assert got.status_code == 200, got.text
        return [e["resource"] for e in got.json().get("entry", [])]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(events("110123")) < 2:
        time.sleep(0.2)  # the trail writes in batches
    logins, logouts = events("110122"), events("110123")
    refused = [e for e in logins if e["outcome"] == "4"]
    assert refused and "refused" in str(refused[0]["outcomeDesc"])
    ok = [e for e in logins if e["outcome"] == "0" and e["agent"][0]["who"]["identifier"]["value"] == "jane"]  # type: ignore[index]
    assert len(ok) >= 2 and ok[0]["type"]["code"] == "110114" and ok[0]["agent"][0]["who"]["display"] == "Jane Doe"  # type: ignore[index]
    assert any(a["who"].get("identifier", {}).get("value") == "interop-worklist" for a in ok[0]["agent"])  # type: ignore[attr-defined]
    assert len(logouts) >= 2 and all(e["outcome"] == "0" for e in logouts)
