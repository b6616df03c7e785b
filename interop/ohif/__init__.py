"""The OHIF viewer at ``/ohif/``, same-origin with this node's DICOMweb (issue 6).

* :mod:`interop.ohif.fetch`: the setup step that installs OHIF's prebuilt viewer (npm ``@ohif/app``'s ``dist/``);
* :mod:`interop.ohif.site`: those files under ``/ohif/`` (root paths moved, media types, client-route fallback);
* :mod:`interop.ohif.appconfig`: the generated ``app-config.js`` (our DICOMweb, OpenID Connect sign-in);
* :mod:`interop.ohif.router`: the HTTP routes.

The worklist links a study as ``/ohif/viewer?StudyInstanceUIDs=<uid>`` (:func:`viewer_url`).
"""

from urllib.parse import quote

from interop.ohif.router import router


def viewer_url(study_instance_uid: str, base: str = "/ohif") -> str:
    """The viewer's URL for one study (OHIF's basic viewer mode, ``StudyInstanceUIDs`` query parameter)."""
    return f"{base}/viewer?StudyInstanceUIDs={quote(study_instance_uid, safe='.')}"


__all__ = ["router", "viewer_url"]
