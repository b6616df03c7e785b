"""Helpers for driving the built-in authorization server as a SMART app would (httpx, no browser)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from interop.auth.server import AuthorizationServer
from interop.auth.tokens import TokenService
from interop.config import AuthServerSettings
from interop.store.db import Database
from tests.conftest import ServerProc

PASSWORD = "correct horse battery staple"
#: The extra audience (auth.server.audience) of the package's node's tokens.
PARTNER_AUDIENCE = "urn:interop:partner"
#: user name -> (role, display name, fhirUser)
USERS = {
    "jane": ("radiologist", "Jane Doe", "Practitioner/jane-1"),
    "vic": ("viewer", "Vic Viewer", None),
    "tom": ("technologist", "Tom Tech", None),
    "gone": ("physician", "Gone Away", None),
}


def cli(srv: ServerProc, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``interop ARGS`` run here, through :func:`interop.cli.main` with the node's environment (the command line
    as a child process costs a second or more of interpreter start-up; ``interop token`` is also run as one,
    through tests/conftest.py's ``ServerProc.token``)."""
    from interop.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("INTEROP_")]:
            mp.delenv(key)
        for key, value in srv.env.items():
            if key.startswith("INTEROP_"):
                mp.setenv(key, value)
        mp.setattr(sys, "stdin", io.StringIO(stdin or ""))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as exc:
                rc = int(exc.code or 0)
    return subprocess.CompletedProcess(["interop", *args], rc, out.getvalue(), err.getvalue())


def auth_server(srv: ServerProc) -> AuthorizationServer:
    """The node's authorization server, opened in this process on the node's database (what the CLI does, without
    a second or so of interpreter start-up per command)."""
    settings = AuthServerSettings()
    tokens = TokenService((srv.data_dir / "secret.key").read_bytes().strip(), issuer="interop", audience="interop",
                          ttl=600)
    return AuthorizationServer(Database(f"sqlite:///{srv.data_dir / 'interop.db'}"), tokens, settings, token_ttl=600)


def system_client(srv: ServerProc, scope: str = "system/*.cruds") -> httpx.Client:
    """An HTTP client with an HS256 system token, as ``interop token`` mints it (minted here)."""
    tokens = TokenService((srv.data_dir / "secret.key").read_bytes().strip(), issuer="interop", audience="interop",
                          ttl=600)
    return httpx.Client(base_url=srv.base_url, headers=bearer(tokens.mint(scope=scope)), timeout=60)


@dataclass
class Pkce:
    """RFC 7636 §4.1-4.2: a verifier and its S256 challenge."""

    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()


def authorize_params(srv: ServerProc, *, client_id: str = "interop-worklist", redirect: str = "/index.html",
                     scope: str = "openid fhirUser offline_access user/*.cruds", pkce: Pkce | None = None,
                     state: str = "xyz-state", **extra: str) -> dict[str, str]:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": f"{srv.base_url}{redirect}",
              "scope": scope, "state": state, "aud": f"{srv.base_url}/fhir"}
    if pkce is not None:
        params.update(code_challenge=pkce.challenge, code_challenge_method="S256")
    params.update(extra)
    return {k: v for k, v in params.items() if v != ""}


def login_form(http: httpx.Client, params: dict[str, str]) -> httpx.Response:
    return http.get("/auth/authorize", params=params)


def submit_login(http: httpx.Client, page: httpx.Response, username: str, password: str = PASSWORD,
                 action: str = "login") -> httpx.Response:
    """Post the login form of ``page`` back as a browser would (its hidden fields, the CSRF cookie)."""
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    fields = {k: _unescape(v) for k, v in fields.items()}
    return http.post("/auth/authorize", data={**fields, "username": username, "password": password,
                                              "action": action})


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


def redirect_query(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code in (302, 303), (resp.status_code, resp.text[:500])
    return {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["location"]).query).items()}


def exchange(http: httpx.Client, srv: ServerProc, code: str, pkce: Pkce, *, redirect: str = "/index.html",
             client_id: str = "interop-worklist") -> httpx.Response:
    return http.post("/auth/token", data={"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": f"{srv.base_url}{redirect}", "client_id": client_id,
                                          "code_verifier": pkce.verifier})


def sign_in(srv: ServerProc, username: str, *, http: httpx.Client | None = None, password: str = PASSWORD,
            **params: Any) -> dict[str, Any]:
    """The whole authorization-code flow with PKCE for ``username``; the token response."""
    own = http is None
    http = http or httpx.Client(base_url=srv.base_url, timeout=30)
    try:
        pkce = Pkce()
        p = authorize_params(srv, pkce=pkce, **params)
        code = redirect_query(submit_login(http, login_form(http, p), username, password))["code"]
        got = exchange(http, srv, code, pkce, redirect=params.get("redirect", "/index.html"),
                       client_id=params.get("client_id", "interop-worklist"))
        assert got.status_code == 200, got.text
        return dict(got.json())
    finally:
        if own:
            http.close()


def keys(srv: ServerProc) -> KeySet:
    return KeySet.import_key_set(httpx.get(f"{srv.base_url}/auth/jwks").json())


def claims(srv: ServerProc, token: str) -> dict[str, Any]:
    """The verified claims of a token the node signed (checked against its published JWKS)."""
    return dict(jwt.decode(token, keys(srv), algorithms=["RS256"]).claims)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
