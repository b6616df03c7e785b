"""What the built-in authorization server tells clients about itself: SMART's
``/fhir/.well-known/smart-configuration`` (SMART App Launch 2.x §Conformance), OpenID Connect Discovery 1.0
§3 ``/.well-known/openid-configuration``, and the CapabilityStatement's ``oauth-uris`` extension (SMART
§Conformance "CapabilityStatement", which python ``fhirclient`` reads). Pure: a base URL in, JSON out.
"""

from __future__ import annotations

from typing import Any

from interop.auth.server import ASSERTION_ALGORITHMS, CONTEXT_SCOPES

GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials"]
AUTH_METHODS = ["none", "private_key_jwt", "client_secret_basic", "client_secret_post"]
SCOPES = [*CONTEXT_SCOPES, "patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.rs", "user/*.rs",
          "system/*.rs", "patient/*.read", "user/*.read", "system/*.read"]
#: SMART App Launch 2.x §Capabilities this server has. No ``context-standalone-patient``: there is no patient
#: picker (a standalone ``launch/patient`` request gets no patient context).
CAPABILITIES = [
    "launch-ehr", "launch-standalone", "authorize-post", "client-public", "client-confidential-asymmetric",
    "client-confidential-symmetric", "context-ehr-patient", "context-banner", "sso-openid-connect",
    "permission-v1", "permission-v2", "permission-patient", "permission-user", "permission-offline",
    "permission-online",
]
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def endpoints(base_url: str) -> dict[str, str]:
    base = base_url.rstrip("/")
    return {"authorize": f"{base}/auth/authorize", "token": f"{base}/auth/token",
            "revoke": f"{base}/auth/revoke", "jwks": f"{base}/auth/jwks", "userinfo": f"{base}/auth/userinfo",
            "logout": f"{base}/auth/logout"}


def smart_configuration(base_url: str, issuer: str) -> dict[str, Any]:
    e = endpoints(base_url)
    return {
        "issuer": issuer,
        "jwks_uri": e["jwks"],
        "authorization_endpoint": e["authorize"],
        "token_endpoint": e["token"],
        "revocation_endpoint": e["revoke"],
        "userinfo_endpoint": e["userinfo"],
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def openid_configuration(base_url: str, issuer: str) -> dict[str, Any]:
    e = endpoints(base_url)
    return {
        "issuer": issuer,
        "authorization_endpoint": e["authorize"],
        "token_endpoint": e["token"],
        "revocation_endpoint": e["revoke"],
        "userinfo_endpoint": e["userinfo"],
        "jwks_uri": e["jwks"],
        "end_session_endpoint": e["logout"],  # OpenID Connect RP-Initiated Logout 1.0
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GRANT_TYPES,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "name", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login"],
    }


def capability_security(base_url: str) -> dict[str, Any]:
    """``CapabilityStatement.rest.security`` parts for SMART: the service coding and the ``oauth-uris``
    extension (authorize, token, revoke)."""
    e = endpoints(base_url)
    return {
        "extension": [{"url": OAUTH_URIS, "extension": [
            {"url": "authorize", "valueUri": e["authorize"]},
            {"url": "token", "valueUri": e["token"]},
            {"url": "revoke", "valueUri": e["revoke"]},
        ]}],
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile"}],
    }
