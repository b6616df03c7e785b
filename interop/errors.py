"""One error hierarchy for the whole server.

Each error knows how it is told on every wire we speak:

* DIMSE: a C-STORE/C-FIND status (PS3.4 Annex B.2.3, PS3.7 Annex C);
* DICOMweb STOW-RS: the same status as the FailureReason (0008,1197) of a FailedSOPSequence item
  (PS3.18 §10.5.3);
* HTTP: a status code; FHIR: an OperationOutcome issue code (R4 ``issue-type`` value set);
* HL7 v2: an ACK code (AE/AR) and an ERR-3 error code from HL7 table 0357 (v2.5.1 Ch. 2 §2.9).

Handlers catch :class:`InteropError` at the edge and translate; nothing else decides a status.
"""

from __future__ import annotations

from typing import Any, ClassVar


class InteropError(Exception):
    """Base class. Defaults describe an internal processing failure."""

    dimse_status: ClassVar[int] = 0x0110  # Processing failure (PS3.7 C.4.2)
    http_status: ClassVar[int] = 500
    fhir_code: ClassVar[str] = "exception"
    hl7_ack: ClassVar[str] = "AE"
    hl7_error_code: ClassVar[str] = "207"  # Application internal error
    #: Seconds an HTTP client should wait before trying again (the ``Retry-After`` header, RFC 9110 §10.2.3),
    #: for errors that pass; None: no header.
    retry_after_seconds: ClassVar[int | None] = None

    def __init__(
        self, message: str, *, expression: str | None = None, identity: tuple[str | None, str | None] = (None, None)
    ) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        #: (SOP Class UID, SOP Instance UID) of the instance the error is about, where they could be read
        #: (STOW-RS reports them in the FailedSOPSequence item, PS3.18 Annex I).
        self.identity = identity

    def operation_outcome(self) -> dict[str, Any]:
        """FHIR R4 OperationOutcome (JSON) describing this error."""
        issue: dict[str, Any] = {
            "severity": "error" if self.http_status < 500 else "fatal",
            "code": self.fhir_code,
            "diagnostics": self.message,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return {"resourceType": "OperationOutcome", "issue": [issue]}


class InvalidInput(InteropError):
    """Input that cannot be understood (C000, HTTP 400, FHIR ``invalid``, HL7 AE)."""

    dimse_status = 0xC000
    http_status = 400
    fhir_code = "invalid"
    hl7_error_code = "102"


class UndecodableDataset(InvalidInput):
    """The bytes do not decode as a DICOM data set (truncated, corrupt, not DICOM)."""

    dimse_status = 0xC210  # Cannot understand: dataset could not be decoded


class DatasetMismatch(InvalidInput):
    """Data set does not match SOP class, or lacks an attribute the store needs (PS3.4 B.2.3: A900)."""

    dimse_status = 0xA900
    hl7_error_code = "101"


class SopClassNotSupported(InteropError):
    dimse_status = 0x0122  # Refused: SOP class not supported
    http_status = 415
    fhir_code = "not-supported"
    hl7_ack = "AR"
    hl7_error_code = "200"


class DuplicateInstance(InteropError):
    """A different payload under a stored SOP Instance UID, with the ``reject`` policy (PS3.7 C.4.2: 0111)."""

    dimse_status = 0x0111
    http_status = 409
    fhir_code = "duplicate"
    hl7_error_code = "205"


class OutOfResources(InteropError):
    """Refused: out of resources (PS3.4 B.2.3: A700); HTTP 503."""

    dimse_status = 0xA700
    http_status = 503
    fhir_code = "transient"
    hl7_error_code = "207"
    retry_after_seconds = 30


class InsufficientStorage(OutOfResources):
    """The node's storage is below its free-space watermark (interop.store.space): new data is refused before
    any of it is written. C-STORE A700, HTTP 503 with ``Retry-After``, HL7 ``AE`` with ERR-3 207."""

    retry_after_seconds = 60


class NotFound(InteropError):
    dimse_status = 0xC000
    http_status = 404
    fhir_code = "not-found"
    hl7_error_code = "204"


class NotAcceptable(InteropError):
    """No representation matches the Accept header (PS3.18 §8.7)."""

    http_status = 406
    fhir_code = "not-supported"


class UnsupportedMediaType(InvalidInput):
    """The request payload's media type is not one this endpoint takes (HTTP 415; PS3.18 §10.5.3.1)."""

    http_status = 415
    fhir_code = "not-supported"


class SegmentError(InvalidInput):
    """A segment that is malformed, out of order or missing where the message structure requires it
    (HL7 v2.5.1 table 0357: 100 Segment sequence error)."""

    hl7_error_code = "100"


class RequiredFieldMissing(InvalidInput):
    """A field the message needs is empty (HL7 v2.5.1 table 0357: 101 Required field missing)."""

    hl7_error_code = "101"


class TableValueNotFound(InvalidInput):
    """A coded value outside the table it is drawn from (HL7 v2.5.1 table 0357: 103 Table value not found)."""

    hl7_error_code = "103"


class MessageTooLarge(InvalidInput):
    """A message or payload larger than this node accepts (HTTP 413; HL7 AR)."""

    http_status = 413
    fhir_code = "too-long"
    hl7_ack = "AR"
    hl7_error_code = "207"


class UnsupportedMessageType(InteropError):
    """An HL7 v2 message type this node does not process (HL7 v2.5.1 Ch. 2 §2.9.2: AR, table 0357: 200)."""

    http_status = 400
    fhir_code = "not-supported"
    hl7_ack = "AR"
    hl7_error_code = "200"


class MissingMessageType(UnsupportedMessageType):
    """MSH-9 is empty: the message cannot be routed (HL7 AR; table 0357: 101 Required field missing)."""

    hl7_error_code = "101"


class UnsupportedEventCode(UnsupportedMessageType):
    """A trigger event this node does not process for a known message type (table 0357: 201)."""

    hl7_error_code = "201"


class UnsupportedProcessingId(UnsupportedMessageType):
    """MSH-11 names a processing ID this node does not take (table 0357: 202)."""

    hl7_error_code = "202"


class UnsupportedVersion(UnsupportedMessageType):
    """MSH-12 names a version this node does not take (table 0357: 203)."""

    hl7_error_code = "203"


class Unauthorized(InteropError):
    dimse_status = 0x0124  # Refused: not authorized
    http_status = 401
    fhir_code = "login"
    hl7_ack = "AR"
    hl7_error_code = "207"


class Forbidden(Unauthorized):
    http_status = 403
    fhir_code = "forbidden"


class Conflict(InteropError):
    http_status = 409
    fhir_code = "conflict"


class PreconditionFailed(Conflict):
    """A condition of the request did not hold: ``If-Match`` names another version, or a conditional
    operation matched more than one resource (FHIR R4 http.html §3.1.0.5, §3.1.0.10; HTTP 412)."""

    http_status = 412


class Gone(NotFound):
    """The resource was deleted (FHIR R4 http.html §3.1.0.2: read of a deleted resource is 410)."""

    http_status = 410
    fhir_code = "deleted"


class MethodNotAllowed(InteropError):
    """The interaction is not offered for this target (HTTP 405), e.g. writing a read-only resource type."""

    http_status = 405
    fhir_code = "not-supported"
    hl7_ack = "AR"
    hl7_error_code = "200"


class Unprocessable(InvalidInput):
    """Well-formed input that breaks a profile or a business rule (HTTP 422, FHIR ``processing``;
    R4 http.html §3.1.0.4.2). Carries every violation found as (message, expression)."""

    http_status = 422
    fhir_code = "processing"

    def __init__(self, message: str, *, issues: list[tuple[str, str | None]] | None = None) -> None:
        super().__init__(message, expression=issues[0][1] if issues else None)
        self.issues = issues or [(message, None)]

    def operation_outcome(self) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for msg, where in self.issues:
            issue: dict[str, Any] = {"severity": "error", "code": self.fhir_code, "diagnostics": msg}
            if where:
                issue["expression"] = [where]
            out.append(issue)
        return {"resourceType": "OperationOutcome", "issue": out}


__all__ = [
    "Conflict",
    "DatasetMismatch",
    "DuplicateInstance",
    "Forbidden",
    "InteropError",
    "Gone",
    "InsufficientStorage",
    "InvalidInput",
    "MethodNotAllowed",
    "MessageTooLarge",
    "MissingMessageType",
    "NotAcceptable",
    "NotFound",
    "OutOfResources",
    "PreconditionFailed",
    "RequiredFieldMissing",
    "SegmentError",
    "SopClassNotSupported",
    "TableValueNotFound",
    "UndecodableDataset",
    "Unauthorized",
    "UnsupportedEventCode",
    "UnsupportedMediaType",
    "Unprocessable",
    "UnsupportedMessageType",
    "UnsupportedProcessingId",
    "UnsupportedVersion",
]
