"""OHIF's ``app-config.js`` for this node, generated (the installed ``dist/`` keeps OHIF's own, unused).

One data source, this node's DICOMweb (PS3.18 ch. 10) on the viewer's own origin, described the way OHIF 3.13's
``@ohif/extension-default`` DICOMweb data source reads it:

* ``qidoRoot``/``wadoRoot``/``wadoUriRoot``: ``<origin>/dicomweb``; ``staticWado: false`` (a real origin
  server: QIDO-RS matching, ``includefield``, ``limit``/``offset`` and ``fuzzymatching`` are done here,
  ``qidoSupportsIncludeField``/``supportsFuzzyMatching``/``supportsWildcard``);
* ``imageRendering: 'wadors'``: frames by WADO-RS (``…/frames/N`` with ``transfer-syntax=*``); thumbnails
  from our rendered ``…/thumbnail`` resource (``thumbnailRendering: 'thumbnail'``, fetched with the token);
* ``enableStudyLazyLoad``: series metadata fetched series by series;
* ``bulkDataURI.enabled``: the BulkDataURIs in our metadata are absolute and served (SR and SEG content);
* ``singlepart: 'pdf,video'``: only those come as a single part; frames and bulk data are multipart/related
  as PS3.18 specifies, which OHIF's client parses.

Sign-in: OpenID Connect authorization code with PKCE (``response_type: 'code'`` selects OHIF's
oidc-client-ts client) against this node's built-in authorization server (or ``ohif.authority``); SMART's
``aud`` (the node's FHIR base) goes as an extra authorization parameter, which that server requires. OHIF then
sends ``Authorization: Bearer <access token>`` on every DICOMweb request. ``redirect_uri`` is
``<base>/ohif/callback`` (OHIF makes it absolute under ``routerBasename``).

Pure: settings in, JavaScript text out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ViewerConfig:
    """What the viewer needs to know about this node."""

    #: URL path OHIF is served under, without the trailing slash (``/ohif``): OHIF's ``routerBasename``.
    router_basename: str
    #: The node's public base URL (``http.public_url``); ``None``: the origin the viewer was loaded from.
    public_url: str | None
    #: OpenID Connect client id of the viewer.
    client_id: str
    #: Scopes it asks for.
    scope: str
    #: Sign-in authority; ``None``: this node's built-in authorization server (its issuer, else the base URL).
    authority: str | None
    #: Whether the authority is this node's built-in server (then SMART's ``aud`` goes with the request).
    builtin_server: bool = True


def data_source(dicomweb_root: Any) -> dict[str, Any]:
    """OHIF's DICOMweb data source over ``dicomweb_root`` (a URL, or a JS expression marker, see below)."""
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "interop",
        "configuration": {
            "friendlyName": "interop node DICOMweb",
            "name": "interop",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": dicomweb_root,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "supportsStow": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "thumbnail",
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "pdf,video",
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
            "loadMultiframeAsPart10": False,
        },
    }


#: Placeholders replaced by JavaScript expressions after JSON encoding.
_ROOT = "\x00ROOT\x00"


def app_config(cfg: ViewerConfig) -> dict[str, Any]:
    """``window.config`` as data; URLs that depend on the page's origin hold the :data:`_ROOT` marker."""
    oidc: dict[str, Any] = {
        "authority": cfg.authority.rstrip("/") if cfg.authority else _ROOT,
        "client_id": cfg.client_id,
        "redirect_uri": "/callback",
        "post_logout_redirect_uri": "/",
        "response_type": "code",
        "scope": cfg.scope,
        "automaticSilentRenew": True,
        "revokeAccessTokenOnSignout": True,
    }
    if cfg.builtin_server:
        oidc["extraQueryParams"] = {"aud": _ROOT + "/fhir"}
    return {
        "name": "interop",
        "routerBasename": cfg.router_basename,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 25, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": "interop",
        "dataSources": [data_source(_ROOT + "/dicomweb")],
        "oidc": [oidc],
    }


def app_config_js(cfg: ViewerConfig) -> str:
    """The text of ``app-config.js``: ``window.config = {…}`` with the node's root computed in the page
    (``http.public_url`` if set, else ``window.location.origin``)."""
    root = json.dumps(cfg.public_url.rstrip("/")) if cfg.public_url else "window.location.origin"
    body = json.dumps(app_config(cfg), indent=2)
    # A marker at the start of a JSON string: "\u0000ROOT\u0000/dicomweb" -> ROOT + "/dicomweb".
    marker = json.dumps(_ROOT)[1:-1]
    body = body.replace(f'"{marker}"', "ROOT").replace(f'"{marker}', 'ROOT + "')
    return (
        "/* Generated by interop (interop.ohif.appconfig): OHIF over this node's DICOMweb. */\n"
        "(function () {\n"
        f"  var ROOT = {root};\n"
        f"  window.config = {body};\n"
        f"{_SR_GUARD}"
        "})();\n"
    )


#: OHIF 3.13's SR loader (cornerstone-dicom-sr ``_checkIfCanAddMeasurementsToDisplaySet``) tries to place every
#: TID 1500 measurement group on an image, once per display set of the study, until all are placed. A group without
#: image coordinates (our volumes and findings: NUM and qualitative evaluations, no SCOORD) is never placed: the
#: loader reads its missing ``coords[0]``, or goes on to display sets whose image ids it can't map (a SEG's), and
#: throws; OHIF then shows "Something went wrong" for the whole report. Its ``onBeforeSRAddMeasurement``
#: customization runs just before that read: such a group gets an empty placeholder and counts as done (there is
#: nothing to draw), so the loader finishes.
_SR_GUARD = """\
  window.config.customizationService = {
    onBeforeSRAddMeasurement: function (args) {
      var m = args.measurement;
      if (!m.coords || !m.coords.length) {
        m.coords = [{}];
        m.loaded = true;
      }
      return m;
    },
  };
"""
