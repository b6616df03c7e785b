"""The patient compartment of ``patient/`` scopes (SMART App Launch 2.x §Scopes: "patient/ … for the patient
in context"; FHIR R4 compartmentdefinition-patient).

A token whose only scopes for an interaction are ``patient/`` ones reaches the data of its ``patient`` claim
and nothing else. :func:`compartment_filter` says which patient (or None when the token reaches beyond one
patient); :func:`in_compartment` and :func:`compartment_params` apply it to FHIR resources and searches, the
way the FHIR facade's ``patient`` search parameter links each type to its patient.

A resource of another patient is refused with 403 Forbidden, not hidden behind a 404: the ids are opaque and
server-assigned, so the refusal tells nothing a guess would not, and the caller learns that it is its scope,
not the data, that is missing.
"""

from __future__ import annotations

from typing import Any

from interop.auth.tokens import InsufficientScope, Principal
from interop.errors import Forbidden


def compartment_filter(principal: Principal, resource: str | None = None, permission: str = "r") -> str | None:
    """The patient id ``principal`` is confined to, or None when it is not confined.

    With ``resource`` (and ``permission``, one of c r u d s), only the scopes that grant that permission on that
    type count: ``user/Observation.rs patient/Task.rs`` is confined for Task but not for Observation. Without,
    every resource scope counts. Confined: every counted scope is a ``patient/`` scope (or none counts). Raises
    :class:`Forbidden` for a confined token that names no patient (a ``patient/`` scope without launch context
    reaches no one)."""
    scopes = principal.scopes
    if resource is not None:
        scopes = [s for s in scopes if s.resource in ("*", resource) and permission in s.permissions]
    if any(s.context != "patient" for s in scopes):
        return None
    patient = principal.patient
    if not patient:
        raise InsufficientScope("patient/ scopes need a patient in context (the token has no 'patient' claim)")
    return patient


def _patient_paths(type_: str) -> tuple[str, ...] | None:
    from interop.fhir.registry import resource_def

    defn = resource_def(type_)
    param = defn.param("patient") if defn is not None else None
    return param.paths if param is not None else None


def in_compartment(resource: dict[str, Any], patient_id: str) -> bool:
    """True when ``resource`` is ``Patient/<patient_id>`` or refers to it where its type's ``patient`` search
    parameter looks (``Observation.subject``, ``Task.for``, ``Provenance.target`` …)."""
    from interop.fhir.indexing import split_reference, values_at

    type_ = resource.get("resourceType")
    if type_ == "Patient":
        return resource.get("id") == patient_id
    paths = _patient_paths(str(type_))
    if not paths:
        return False
    for path in paths:
        for ref in values_at(resource, path):
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                split = split_reference(ref["reference"])
                if split is not None and (split[0] or ref.get("type")) == "Patient" and split[1] == patient_id:
                    return True
    return False


def check_in_compartment(resource: dict[str, Any], patient_id: str | None) -> None:
    """Raise :class:`Forbidden` unless ``patient_id`` is None or ``resource`` is in that patient's compartment."""
    if patient_id is not None and not in_compartment(resource, patient_id):
        raise Forbidden(f"{resource.get('resourceType')}/{resource.get('id', '')} is not in the compartment of "
                        f"the patient in context (the token's patient/ scopes reach Patient/{patient_id} only)")


def compartment_params(type_: str, patient_id: str) -> list[tuple[str, str]]:
    """The search parameters that confine a search of ``type_`` to the patient (ANDed with the caller's own);
    :class:`Forbidden` for a type that has no link to a patient."""
    if type_ == "Patient":
        return [("_id", patient_id)]
    if not _patient_paths(type_):
        raise Forbidden(f"{type_} has no link to a patient: not searchable with patient/ scopes")
    return [("patient", f"Patient/{patient_id}")]


def filter_bundle(bundle: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """Drop the entries of a search Bundle (the ``_include``/``_revinclude`` ones) outside the compartment."""
    entries = bundle.get("entry")
    if entries:
        bundle["entry"] = [e for e in entries if not isinstance(e.get("resource"), dict)
                           or e["resource"].get("resourceType") == "OperationOutcome"
                           or in_compartment(e["resource"], patient_id)]
    return bundle


def patient_identifier_values(fhir: Any, principal: Principal, resource: str, permission: str = "r"
                              ) -> frozenset[str] | None:
    """For a token confined to one patient for ``resource``/``permission``: the identifier values of that
    Patient, which is how the node files what is not FHIR (a study's DICOM Patient ID, a report's patient:
    the MRN). None: not confined. A patient in context that is not (or no longer) in the store reaches
    nothing (an empty set)."""
    from interop.errors import Gone, NotFound

    pid = compartment_filter(principal, resource, permission)
    if pid is None:
        return None
    try:
        patient = fhir.read("Patient", pid).resource
    except (NotFound, Gone):
        return frozenset()
    return frozenset(str(i["value"]) for i in patient.get("identifier") or [] if i.get("value"))
