"""The web worklist: a SMART app served by this node at ``/`` (standalone launch) and ``/launch.html`` (EHR
launch), plain HTML, CSS and ES modules under ``/ui/`` with the SMART client library vendored; no build step
and no npm at run time.

The page holds no patient data itself: everything it shows it fetches with the user's bearer token from the
reports API (:mod:`interop.api.reports`), the viewer endpoints (:mod:`interop.api.viewer`), DICOMweb rendered
and FHIR. :mod:`interop.ui.overlays` draws the overlays the viewer endpoints serve.
"""

from interop.ui.router import router

__all__ = ["router"]
