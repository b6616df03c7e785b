"""The CapabilityStatement at ``/fhir/metadata`` (FHIR R4 capabilitystatement.html, http.html §3.1.0.14),
built from the registry the store and search use, so it lists exactly what is implemented."""

from __future__ import annotations

from typing import Any

from interop.fhir.registry import COMMON_PARAMS, RESOURCES, ResourceDef

_DOC = {
    "token": "[system]|[code]; comma-separated values OR",
    "reference": "[Type/]id or an absolute URL; :Type modifier",
    "date": "prefixes eq ne gt lt ge le over the value's range",
    "string": "case- and accent-insensitive prefix; :exact, :contains",
    "quantity": "[prefix]number[|system|code]",
}


def _revincludes(type_: str) -> list[str]:
    out = []
    for d in RESOURCES.values():
        for p in d.params:
            if p.kind == "reference" and (not p.targets or type_ in p.targets):
                out.append(f"{d.type}:{p.name}")
    return out


def _resource(d: ResourceDef) -> dict[str, Any]:
    writable = "create" in d.interactions
    return {
        "type": d.type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{d.type}",
        "interaction": [{"code": code} for code in d.interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": writable,
        "conditionalCreate": writable,
        "conditionalRead": "not-supported",
        "conditionalUpdate": writable,
        "conditionalDelete": "not-supported",
        "referencePolicy": ["literal", "local"],
        "searchInclude": [f"{d.type}:{p.name}" for p in d.params if p.kind == "reference"],
        "searchRevInclude": _revincludes(d.type),
        "searchParam": [
            {"name": p.name, "definition": f"http://hl7.org/fhir/SearchParameter/{d.type}-{p.name}"
             if not p.name.startswith("_") else f"http://hl7.org/fhir/SearchParameter/Resource{p.name}",
             "type": p.kind, "documentation": f"{p.expression}: {_DOC[p.kind]}"}
            for p in (*COMMON_PARAMS, *d.params)
        ],
    }


def capability_statement(base: str, *, software_version: str, date: str, smart: dict[str, Any] | None = None,
                         cors: bool = False) -> dict[str, Any]:
    """The server's CapabilityStatement (kind ``instance``); ``smart``: the SMART ``oauth-uris`` extension and
    service coding of ``rest.security`` (:func:`interop.auth.discovery.capability_security`); ``cors``: whether
    CORS headers are sent (``http.cors_origins`` is set)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "interop",
        "kind": "instance",
        "software": {"name": "interop", "version": software_version},
        "implementation": {"description": "interop imaging-AI node FHIR R4 facade", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Search: _count (max 1000), _sort (_id, _lastUpdated, date parameters), _include, "
                             "_revinclude, total always given; Prefer: handling=strict|lenient (lenient default).",
            "security": {
                "cors": cors,
                **(smart or {}),
                "description": "Every interaction except /metadata needs an OAuth 2.0 bearer token whose SMART v2 "
                               "scopes grant it (read r, search s, create c, update u, delete d); patient/ "
                               "scopes reach the patient in context only. Tokens come from this node's SMART "
                               "authorization server (/fhir/.well-known/smart-configuration), a configured "
                               "OpenID Connect provider, or `interop token`.",
            },
            "resource": [_resource(d) for d in RESOURCES.values()],
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }
