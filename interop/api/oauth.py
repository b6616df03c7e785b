"""The built-in authorization server over HTTP (:mod:`interop.auth.server`): SMART App Launch 2.x.

* ``GET|POST /auth/authorize``: the authorization endpoint (RFC 6749 §4.1.1). A login page (plain HTML form, no
  script) unless the browser has a live login session (the ``interop_sso`` cookie, HttpOnly, SameSite=Lax,
  Secure over https), then a redirect with ``code`` and ``state``. A bad client or redirect URI gets an error
  page; any other error a redirect with ``error`` (§4.1.2.1).
* ``POST /auth/token``: the token endpoint (§3.2; authorization_code, refresh_token, client_credentials).
* ``POST /auth/revoke`` (RFC 7009), ``GET /auth/userinfo`` (OpenID Connect Core §5.3), ``GET|POST /auth/logout``.
* ``GET /auth/jwks``, ``GET /fhir/.well-known/smart-configuration``, ``GET /.well-known/openid-configuration``.

All of them are public (no bearer token), except ``/auth/userinfo``.
"""

from __future__ import annotations

import datetime as dt
import html
import secrets
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc6749.errors import OAuth2Error
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from interop.api import errors
from interop.api.deps import AuthServerDep, NodeDep, PrincipalDep, base_url_of
from interop.auth import discovery
from interop.auth.server import AuthorizationRequest, AuthorizationServer, UntrustedRedirect, access_denied
from interop.auth.tokens import InsufficientScope, InvalidToken

router = APIRouter(tags=["SMART authorization"])
#: ``/fhir/.well-known/smart-configuration`` alone: included before the FHIR router, whose
#: ``/fhir/{type}/{id}`` would take it for a read of type ``.well-known``.
smart_router = APIRouter(tags=["SMART authorization"])

SESSION_COOKIE = "interop_sso"
CSRF_COOKIE = "interop_login_csrf"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_HEADERS = {**_NO_STORE, "X-Frame-Options": "DENY",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"}


def _secure(request: Request, node: Any) -> bool:
    return base_url_of(request, node).startswith("https://")


# -- discovery ----------------------------------------------------------------------------------------------


@smart_router.get("/fhir/.well-known/smart-configuration", summary="SMART configuration (public)")
def smart_configuration(request: Request, node: NodeDep, server: AuthServerDep) -> JSONResponse:
    """SMART App Launch 2.x §Conformance: endpoints, grant types, scopes and capabilities."""
    base = base_url_of(request, node)
    return JSONResponse(discovery.smart_configuration(base, server.tokens.issuer_for(base)))


@router.get("/.well-known/openid-configuration", summary="OpenID Provider metadata (public)")
def openid_configuration(request: Request, node: NodeDep, server: AuthServerDep) -> JSONResponse:
    """OpenID Connect Discovery 1.0 §3."""
    base = base_url_of(request, node)
    return JSONResponse(discovery.openid_configuration(base, server.tokens.issuer_for(base)))


@router.get("/auth/jwks", summary="the public keys tokens are signed with (public)")
def jwks(server: AuthServerDep) -> JSONResponse:
    """JSON Web Key Set (RFC 7517 §5) of the RS256 key the access and ID tokens are signed with."""
    return JSONResponse(server.tokens.jwks(), headers={"Cache-Control": "max-age=300"})


# -- the authorization endpoint -------------------------------------------------------------------------------


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · interop</title>
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
label{{display:block;margin-top:1rem;font-weight:600}}input[type=text],input[type=password]{{width:100%;
padding:.5rem;font-size:1rem;box-sizing:border-box}}button{{margin-top:1.25rem;padding:.5rem 1.25rem;
font-size:1rem}}.error{{color:#a40000;border-left:4px solid #a40000;padding-left:.75rem}}
ul{{padding-left:1.25rem}}</style></head>
<body><main>{body}</main></body></html>"""
    return HTMLResponse(doc, status_code=status, headers=_PAGE_HEADERS)


def _error_page(message: str) -> HTMLResponse:
    return _page("Sign-in request refused", f"""<h1>Sign-in request refused</h1>
<p class="error" role="alert">{html.escape(message)}</p>
<p>The application that sent you here is not registered for this address. Close this page and tell whoever
runs the application.</p>""", status=400)


def _login_page(req: AuthorizationRequest, csrf: str, *, error: str | None = None, username: str = "",
                status: int = 200) -> HTMLResponse:
    hidden = "\n".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                       for k, v in req.params.items())
    scopes = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in req.scope.split())
    alert = f'<p class="error" role="alert" id="login-error">{html.escape(error)}</p>' if error else ""
    described = ' aria-describedby="login-error"' if error else ""
    patient = f"<p>Patient in context: <code>{html.escape(req.patient)}</code></p>" if req.patient else ""
    return _page("Sign in", f"""<h1>Sign in</h1>
<p><strong>{html.escape(req.client.client_id)}</strong> asks to act for you on this node with:</p>
<ul>{scopes}</ul>{patient}
{alert}
<form method="post" action="/auth/authorize">
{hidden}
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<label for="username">User name</label>
<input type="text" id="username" name="username" autocomplete="username" required autofocus
 value="{html.escape(username)}"{described}>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required{described}>
<button type="submit" name="action" value="login">Sign in</button>
<button type="submit" name="action" value="deny" formnovalidate>Cancel</button>
</form>""", status=status)


def _show_login(request: Request, node: Any, req: AuthorizationRequest, *, error: str | None = None,
                username: str = "", status: int = 200) -> HTMLResponse:
    csrf = secrets.token_urlsafe(24)
    page = _login_page(req, csrf, error=error, username=username, status=status)
    page.set_cookie(CSRF_COOKIE, csrf, max_age=1800, path="/auth", httponly=True, samesite="lax",
                    secure=_secure(request, node))
    return page


def _redirect(location: str, *, post: bool) -> RedirectResponse:
    # 303 after a form POST so the browser follows with GET (RFC 9110 §15.4.4).
    return RedirectResponse(location, status_code=303 if post else 302, headers=_NO_STORE)


def _error_redirect(err: OAuth2Error, *, post: bool) -> Response:
    _, _, headers = err()
    location = dict(headers).get("Location")
    if location is None:  # no trusted redirect URI on the error
        return _error_page(f"{err.error}: {err.description}")
    return _redirect(location, post=post)


def _authorize(request: Request, node: Any, server: AuthorizationServer, params: dict[str, str], *,
               post: bool) -> Response:
    base = base_url_of(request, node)
    try:
        req = server.validate_authorization_request(params, base)
    except UntrustedRedirect as exc:
        return _error_page(exc.message)
    except OAuth2Error as err:
        return _error_redirect(err, post=post)
    action = params.get("action")
    if action == "deny":
        return _error_redirect(access_denied(req), post=post)
    if action == "login":
        cookie = request.cookies.get(CSRF_COOKIE)
        if not cookie or not secrets.compare_digest(cookie, params.get("csrf", "")):
            return _show_login(request, node, req, error="This sign-in form has expired. Please sign in again.",
                               username=params.get("username", ""), status=400)
        user = server.authenticate(params.get("username", ""), params.get("password", ""))
        _audit_sign_in(request, node, "login", params.get("username", ""), user is not None, req.client.client_id,
                       display_name=user.display_name if user is not None else None,
                       reason=None if user is not None else "wrong user name or password, or account disabled")
        if user is None:
            return _show_login(request, node, req, error="Wrong user name or password, or the account is disabled.",
                               username=params.get("username", ""), status=401)
        value, max_age = server.start_session(user)
        response = _redirect(server.issue_code(req, user, server.now()), post=post)
        response.set_cookie(SESSION_COOKIE, value, max_age=max_age, path="/auth", httponly=True, samesite="lax",
                            secure=_secure(request, node))
        response.delete_cookie(CSRF_COOKIE, path="/auth")
        return response
    session = None if req.prompt == "login" else server.session_user(request.cookies.get(SESSION_COOKIE))
    if session is not None:  # single sign-on: a second client is not asked again
        user, auth_time = session
        return _redirect(server.issue_code(req, user, auth_time), post=post)
    if req.prompt == "none":
        return _error_redirect(req.error(OAuth2Error(error="login_required",
                                                     description="no login session and prompt=none")), post=post)
    return _show_login(request, node, req)


def _audit_sign_in(request: Request, node: Any, action: str, username: str, succeeded: bool,
                   client_id: str | None, *, display_name: str | None = None, reason: str | None = None) -> None:
    """Record a sign-in or sign-out in the audit trail (when it is on)."""
    if not node.settings.audit.enabled:
        return
    from interop.audit import authentication_event

    node.audit.record(authentication_event(
        action=action, username=username[:200], succeeded=succeeded, client_id=client_id,
        client_addr=request.client.host if request.client else None, at=dt.datetime.now(dt.UTC),
        display_name=display_name,
        reason=reason))


@router.get("/auth/authorize", summary="authorization endpoint (login page)", response_class=HTMLResponse)
def authorize_get(request: Request, node: NodeDep, server: AuthServerDep) -> Response:
    """RFC 6749 §4.1.1 with PKCE (RFC 7636) and SMART's ``aud`` and ``launch``."""
    return _authorize(request, node, server, dict(request.query_params), post=False)


@router.post("/auth/authorize", summary="authorization endpoint (login form; authorize-post)",
             response_class=HTMLResponse)
async def authorize_post(request: Request, node: NodeDep, server: AuthServerDep) -> Response:
    """The login form's submission, or an authorization request sent by POST (SMART ``authorize-post``)."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    return await run_in_threadpool(_authorize, request, node, server, form, post=True)


# -- the token endpoint ------------------------------------------------------------------------------------------


def _oauth_error(err: OAuth2Error) -> JSONResponse:
    status, body, headers = err()
    if err.error == "invalid_client":
        status = 401  # RFC 6749 §5.2: 401 where the client tried to authenticate
    out = {k: v for k, v in headers if k.lower() != "content-type"}
    return JSONResponse(body, status_code=status, headers={**out, **_NO_STORE})


async def _form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return {}
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post("/auth/token", summary="token endpoint")
async def token(request: Request, node: NodeDep, server: AuthServerDep) -> JSONResponse:
    """RFC 6749 §3.2: ``application/x-www-form-urlencoded``; answers RFC 6749 §5.1 plus SMART launch context,
    or an error of §5.2."""
    form = await _form(request)
    if not form:
        return _oauth_error(OAuth2Error(error="invalid_request",
                                        description="send the parameters as application/x-www-form-urlencoded"))
    try:
        body = await run_in_threadpool(server.token, form, request.headers.get("authorization"),
                                base_url_of(request, node))
    except OAuth2Error as err:
        return _oauth_error(err)
    return JSONResponse(body, headers=_NO_STORE)


@router.post("/auth/revoke", summary="token revocation (RFC 7009)")
async def revoke(request: Request, node: NodeDep, server: AuthServerDep) -> Response:
    """RFC 7009 §2: 200 whether or not the token was known."""
    form = await _form(request)
    try:
        await run_in_threadpool(server.revoke, form, request.headers.get("authorization"), base_url_of(request, node))
    except OAuth2Error as err:
        return _oauth_error(err)
    return Response(status_code=200, headers=_NO_STORE)


@router.get("/auth/userinfo", summary="the signed-in person (OpenID Connect UserInfo)")
def userinfo(request: Request, node: NodeDep, principal: PrincipalDep, server: AuthServerDep) -> JSONResponse:
    """OpenID Connect Core §5.3 for a token of this server's users: ``sub``, ``name``, ``fhirUser``, ``role``."""
    ours = principal.claims.get("iss") == server.tokens.issuer_for(base_url_of(request, node))
    user = server.user(principal.subject) if ours else None
    if user is None or not user.active or "openid" not in principal.scope_text.split():
        raise InvalidToken("userinfo needs an openid access token of a user of this node")
    out = {"sub": user.username, "name": user.display_name, "role": user.role}
    if user.fhir_user:
        out["fhirUser"] = user.fhir_user
    return JSONResponse(out, headers=_NO_STORE)


@router.api_route("/auth/logout", methods=["GET", "POST"], summary="end the login session")
def logout(request: Request, node: NodeDep, server: AuthServerDep) -> Response:
    """Ends the single sign-on session of this browser (access and refresh tokens already issued stay valid
    until they expire or are revoked): OpenID Connect RP-Initiated Logout's ``end_session_endpoint``. With
    ``client_id`` and a ``post_logout_redirect_uri`` registered for that client (one of its redirect URIs) the
    browser goes back there (with ``state``); otherwise a "signed out" page."""
    session = server.session_user(request.cookies.get(SESSION_COOKIE))
    server.end_session(request.cookies.get(SESSION_COOKIE))
    params = request.query_params
    client_id = params.get("client_id")
    if session is not None:
        user = session[0]
        _audit_sign_in(request, node, "logout", user.username, True, client_id, display_name=user.display_name)
    back = params.get("post_logout_redirect_uri")
    client = server.client(client_id)
    page: Response
    if back and client is not None and client.redirect_uri_for(back, base_url_of(request, node)):
        state = params.get("state")
        page = RedirectResponse(back + (("&" if "?" in back else "?") + urlencode({"state": state}) if state else ""),
                                status_code=303)
    else:
        page = _page("Signed out", "<h1>Signed out</h1><p>You are signed out of this node.</p>")
    page.delete_cookie(SESSION_COOKIE, path="/auth")
    return page


# -- wiring ---------------------------------------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Add the ``/auth`` routes and OpenID discovery (:data:`smart_router` is included apart, before the FHIR
    router), and answer token errors with their RFC 6750 §3 ``WWW-Authenticate`` challenge beside the
    OperationOutcome."""

    async def challenge(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidToken | InsufficientScope)
        response = errors._outcome(exc)
        response.headers["WWW-Authenticate"] = exc.www_authenticate
        return response

    app.add_exception_handler(InvalidToken, challenge)
    app.add_exception_handler(InsufficientScope, challenge)
    app.include_router(router)
