"""Conformance statements generated from the running configuration (issue 7): the DICOM Conformance Statement
(PS3.2, in its section order) and the FHIR CapabilityStatement (the same one ``/fhir/metadata`` serves).

Everything in them is read from what the node really does: the presentation contexts the DIMSE listener
accepts (``interop.dicom.listener``), the C-FIND matching keys of the index (``interop.store.query``), the
DIMSE statuses of the error hierarchy (``interop.errors``), the SOP classes the write-back builders make
(``interop.writeback``), and the settings (AE title, port, TLS, allow-lists, destinations). Pure: settings in,
text out; ``interop conformance dicom|fhir`` prints them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydicom.uid import UID

from interop.config import Settings

#: What the write-back sends (``interop.writeback.sr``, ``.seg``, ``.heatmap``): SOP class UID -> what for.
RESULT_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.34": "AI findings and measurements: TID 1500 Imaging Measurement Report "
                                     "(UNVERIFIED; VERIFIED after the physician's sign-off)",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentations (algorithm type AUTOMATIC), referencing the source images",
    "1.2.840.10008.5.1.4.1.1.7": "heat-maps: the radiograph with the map blended in colour (JPEG baseline, "
                                 "burned-in caption)",
}


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else "(private or unknown)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _store_statuses(duplicate_policy: str) -> list[list[str]]:
    from interop import errors
    from interop.store.instances import SUCCESS, WARNING_ELEMENTS_DISCARDED

    rows = [[f"{SUCCESS:04X}", "Success", "the instance and its index row are committed (fsynced) before the "
                                          "response" + ("; an instance received again with another payload "
                                                        "replaces the stored one (duplicate_policy overwrite)"
                                                        if duplicate_policy == "overwrite" else "")]]
    if duplicate_policy == "keep-first":
        rows.append([f"{WARNING_ELEMENTS_DISCARDED:04X}", "Warning",
                     "same SOP Instance UID received again with another payload; the first copy is kept "
                     "(duplicate_policy keep-first)"])
    explained: list[tuple[type[errors.InteropError], str, str]] = []
    if duplicate_policy == "reject":
        explained.append((errors.DuplicateInstance, "Failure", "another payload under a stored SOP Instance UID "
                                                               "(duplicate_policy reject)"))
    explained += [
        (errors.SopClassNotSupported, "Failure", "SOP class not supported"),
        (errors.OutOfResources, "Refused", "out of resources: the storage is below its free-space watermark; "
                                           "nothing is written"),
        (errors.DatasetMismatch, "Error", "data set does not match the SOP class or lacks an attribute the "
                                          "index needs (Study/Series/SOP Instance UID)"),
        (errors.InvalidInput, "Error", "cannot understand"),
        (errors.UndecodableDataset, "Error", "cannot understand: the data set does not decode"),
        (errors.InteropError, "Failure", "processing failure (the reason is in the Error Comment)"),
    ]
    for cls, kind, text in explained:
        rows.append([f"{cls.dimse_status:04X}", kind, text])
    return rows


def dicom_conformance_statement(settings: Settings, *, version: str, date: dt.date | None = None) -> str:
    """The DICOM Conformance Statement of this node as configured (Markdown, PS3.2 section order)."""
    from pynetdicom.presentation import AllStoragePresentationContexts

    from interop.dicom.listener import STORAGE_TRANSFER_SYNTAXES
    from interop.store.query import ATTRS, LEVELS

    d = settings.dicom
    when = (date or dt.datetime.now(dt.UTC).date()).isoformat()
    storage = sorted(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
    dicom_dests = [x for x in settings.writeback.destinations if x.kind == "dicom" and x.enabled]
    web_dests = [x for x in settings.writeback.destinations if x.kind == "dicomweb" and x.enabled]
    lines: list[str] = [
        f"# DICOM Conformance Statement: interop imaging-AI node {version}",
        "",
        f"Generated {when} by `interop conformance dicom` from this node's configuration. It describes this "
        "installation, not the product's every option.",
        "",
        "## 1 Overview",
        "",
        "The node receives studies from a PACS or a modality (C-STORE SCP, STOW-RS), answers queries about "
        "what it holds (C-FIND SCP, QIDO-RS, WADO-RS), runs AI applications on them, and sends the results "
        "back (C-STORE SCU, STOW-RS): a TID 1500 Comprehensive 3D SR, segmentations and heat-map images. "
        "The AI models shipped with the product are demonstration models, not for clinical use.",
        "",
        *_table(["Network service", "SOP classes", "User of service (SCU)", "Provider of service (SCP)"], [
            ["Verification", "Verification", "Yes (`interop doctor`)", "Yes"],
            ["Storage", f"{len(storage)} storage SOP classes (section 2.2.1)",
             "Yes: results (section 2.2.2)" if dicom_dests else "Yes, when a DICOM destination is configured "
                                                                "(none is)", "Yes"],
            ["Query/Retrieve", "Study Root and Patient Root Information Model - FIND", "No", "Yes"],
            ["Query/Retrieve", "MOVE, GET", "No", "No (retrieve is WADO-RS)"],
        ]),
        "",
        "## 2 Networking",
        "",
        "### 2.1 Implementation model",
        "",
        f"One Application Entity, **{d.ae_title}**, listens on TCP port {d.port} (host {d.host}) for as many "
        f"as {d.max_associations} simultaneous associations. Every instance received is streamed to a file, "
        "fsynced and indexed before its C-STORE response; a study is *ready* after a quiet period "
        f"({settings.studies.quiet_seconds:g} s without a new instance), which starts the AI routing. Results go "
        "out through a durable outbox (retries with back-off, a circuit breaker per destination, a dead-letter "
        "list): each result has fixed SOP Instance UIDs, so a retry never makes a second copy.",
        "",
        "### 2.2 AE specifications",
        "",
        f"#### 2.2.1 {d.ae_title} as SCP",
        "",
        "Association acceptance: "
        + (f"only the calling AE titles {', '.join(d.allowed_aes)}" if d.allowed_aes else "any calling AE title")
        + (f"; only from {', '.join(d.allowed_hosts)}" if d.allowed_hosts else "; from any address")
        + f". Called AE title must be {d.ae_title}. Maximum PDU size received: "
        + (f"{d.max_pdu_size} bytes" if d.max_pdu_size else "unlimited (0)")
        + f". Network timeout: {d.network_timeout:g} s. Asynchronous operations window: not negotiated "
        "(one operation at a time). Implementation Class UID and Version Name: pynetdicom's.",
        "",
        "Transfer syntaxes accepted for every storage SOP class (the instance is stored as received, never "
        "transcoded):",
        "",
        *_table(["Transfer syntax", "UID"], [[_uid_name(ts), ts] for ts in STORAGE_TRANSFER_SYNTAXES]),
        "",
        "Verification and the two C-FIND information models are accepted with Implicit and Explicit VR Little "
        "Endian (and the other uncompressed syntaxes pynetdicom offers).",
        "",
        "Storage SOP classes accepted (role SCP):",
        "",
        *_table(["SOP class", "UID"], [[_uid_name(u), u] for u in storage]),
        "",
        "C-STORE response statuses:",
        "",
        *_table(["Status", "Meaning", "When"], _store_statuses(d.duplicate_policy)),
        "",
        "C-FIND (Study Root: levels " + ", ".join(LEVELS) + "; Patient Root: PATIENT as well"
        + "): matching on the keys below (single value, wildcard `*`/`?`, date/time ranges, UID lists; "
        "case-insensitive for person names); other keys are returned when the stored headers have them. "
        "Relational queries are not supported. Cancel is honoured between responses.",
        "",
        *_table(["Attribute", "Level", "Matching"], [[kw, a.level, a.match] for kw, a in ATTRS.items()]),
        "",
        f"#### 2.2.2 {d.ae_title} as SCU",
        "",
    ]
    if dicom_dests:
        lines += ["Results are sent with C-STORE to:", ""]
        lines += _table(["Destination", "Called AE", "Host:port", "Calling AE", "TLS"],
                        [[x.name, x.ae_title, f"{x.host}:{x.port}", x.calling_ae, "yes" if x.tls else "no"]
                         for x in dicom_dests])
        lines += ["", "SOP classes sent (each proposed with its own compressed syntax when compressed, and with "
                  "Explicit and Implicit VR Little Endian; a compressed object the PACS refuses is sent "
                  "uncompressed):", ""]
    else:
        lines += ["No DICOM destination is configured: results stay in this node (and go out by STOW-RS "
                  "where configured). When one is, these SOP classes are sent:", ""]
    lines += _table(["SOP class", "UID", "What"], [[_uid_name(u), u, what] for u, what in RESULT_SOP_CLASSES.items()])
    lines += ["", "A C-STORE failure status is not retried (the object is dead-lettered with the status); a "
              "refused association, a network error or status A7xx is retried.", ""]
    lines += ["### 2.3 DICOMweb (PS3.18)", "",
              f"At `{settings.http.public_url or 'http://<host>:' + str(settings.http.port)}/dicomweb`: QIDO-RS "
              "(studies, series, instances), WADO-RS (study, series, instance, metadata, bulk data, frames, "
              "rendered and thumbnails as JPEG or PNG), STOW-RS (multipart/related application/dicom). Every "
              "request needs an OAuth 2.0 bearer token with SMART scopes on ImagingStudy; a `patient/` token "
              "reaches the patient in context only."]
    if web_dests:
        lines += ["", "Results are also sent with STOW-RS to: "
                  + ", ".join(f"{x.name} ({x.url})" for x in web_dests) + "."]
    lines += ["", "### 2.4 Network interfaces", "",
              "TCP/IP over whatever interfaces the host has (IPv4 and IPv6 as the host resolves them).", "",
              "## 3 Media interchange", "", "None: no DICOM media (DICOMDIR) is read or written.", "",
              "## 4 Support of character sets", "",
              "Instances are stored as received. Patient names and other text are indexed as decoded with "
              "their Specific Character Set (0008,0005); results are written in ISO_IR 192 (UTF-8).", "",
              "## 5 Security", ""]
    if d.tls is not None:
        lines.append("The DIMSE listener speaks TLS only (PS3.15 Annex B, BCP 195 profile); "
                     + ("client certificates are required and checked against the configured CA."
                        if d.tls.require_client_cert else "client certificates are not required."))
    else:
        lines.append("The DIMSE listener speaks plain TCP (no TLS is configured); protect it at the network.")
    lines += ["Association acceptance can be limited by calling AE title and by address (section 2.2.1). "
              "Every HTTP access to patient data and every sign-off is recorded as a FHIR AuditEvent.", "",
              "## 6 Annexes", "",
              "### 6.1 The AI result SR", "",
              "Comprehensive 3D SR, TID 1500 Imaging Measurement Report: observer context = device (the app and "
              "model, TID 4019 algorithm identification with name and version); findings as qualitative "
              "evaluations (present/absent) with the probability (DCM 122157, UCUM `1`); volumes with UCUM "
              "units, finding site and laterality; the source images as evidence. CompletionFlag COMPLETE. "
              "VerificationFlag UNVERIFIED until a physician signs the report off; then a new SR, VERIFIED, with "
              "the Verifying Observer and the earlier SR as its predecessor.", ""]
    return "\n".join(lines)


def capability_statement(settings: Settings, *, version: str, base_url: str | None = None) -> dict[str, Any]:
    """The FHIR CapabilityStatement of this node as configured (what ``GET /fhir/metadata`` answers)."""
    from interop.auth.discovery import capability_security
    from interop.fhir.capability import capability_statement as build
    from interop.fhir.store import instant

    base = (base_url or settings.http.public_url or f"http://127.0.0.1:{settings.http.port}").rstrip("/")
    smart = capability_security(base) if settings.auth.server.enabled else None
    return build(f"{base}/fhir", software_version=version, date=instant(dt.datetime.now(dt.UTC)), smart=smart,
                 cors=bool(settings.http.cors_origins))
