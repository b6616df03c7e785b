"""The HTTP surface: one FastAPI app with DICOMweb, the node's API and health endpoints."""

from interop.api.app import create_app

__all__ = ["create_app"]
