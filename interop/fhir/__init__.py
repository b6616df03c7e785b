"""FHIR R4 (4.0.1) facade: the resource store, search, Bundles and the REST API at ``/fhir``."""

from interop.fhir.store import FhirStore, Stored

__all__ = ["FhirStore", "Stored"]
