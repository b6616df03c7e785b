"""Where write-back results go, and the clients that take them there.

Four kinds of destination, configured as data (``writeback.destinations``, a list discriminated on ``kind``):

* ``dicom``: a PACS by C-STORE (PS3.4 Annex B; PS3.7 §9.1.1, §9.3.1), one association per send, optionally
  over TLS (PS3.15 Annex B);
* ``dicomweb``: a PACS by STOW-RS (PS3.18 §10.5): ``POST {url}/studies``, ``multipart/related;
  type="application/dicom"``; the response's FailedSOPSequence (0008,1198) is read item by item;
* ``fhir``: an EHR by a FHIR R4 transaction Bundle (http.html §3.1.0.11), authorised by a static bearer
  token or by SMART Backend Services (SMART App Launch 2.x, "Backend Services": ``client_credentials`` with
  a ``private_key_jwt`` client assertion, RFC 7523 §2.2), through authlib's httpx ``OAuth2Client``;
* ``webhook``: any HTTP endpoint, a JSON POST with an ``Idempotency-Key`` header
  (draft-ietf-httpapi-idempotency-key-header).

Every failure is one :class:`DeliveryError` with a ``reason`` an integration engineer can act on (status
codes, the peer's own words) and ``retryable``:

=============================================================  ============  ====================================
failure                                                        retryable     why
=============================================================  ============  ====================================
connection refused / reset, DNS, TLS handshake, timeouts       yes           the peer is down or unreachable
association rejected (A-ASSOCIATE-RJ), aborted, no response    yes           peer config/load; it may heal
C-STORE A7xx (out of resources), 0213, 0110 (processing fail.) yes           transient on the peer
C-STORE A9xx, Cxxx, 0122, 0124, 0111, other failures           no            the peer refused this object
no accepted presentation context for the object's SOP class    no            the peer does not store this type
HTTP 408, 425, 429, 5xx (``Retry-After`` kept)                 yes           transient on the peer
HTTP 400, 404, 409, 410, 413, 415, 422, other 4xx, 3xx         no            the peer refused the request
HTTP 401/403 (after one fresh SMART token)                     no            credentials or scopes are wrong
STOW-RS FailedSOPSequence                                      only if every FailureReason is A7xx/0213/0110
FHIR transaction entry ``response.status`` not 2xx             no
SMART token endpoint: OAuth error (``invalid_client`` …)       no            except ``temporarily_unavailable``/
                                                                             ``server_error``; 5xx: yes
webhook 409                                                    yes           Idempotency-Key draft §2.7: the
                                                                             same key is still being processed
=============================================================  ============  ====================================

Whether to try again is the outbox's decision (``max_attempts``, ``give_up_after_seconds``, the
destination's :mod:`circuit breaker <interop.writeback.breaker>`); these clients make one attempt.
"""

from __future__ import annotations

import copy
import email.utils
import io
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from interop.errors import InteropError
from interop.writeback.breaker import BreakerSettings

log = logging.getLogger(__name__)

#: A SMART access token is fetched again this many seconds before its ``expires_in`` runs out.
TOKEN_LEEWAY_SECONDS = 30
#: Lifetime of a SMART client assertion (SMART Backend Services: "no more than five minutes in the future").
ASSERTION_LIFETIME_SECONDS = 300
#: Most presentation contexts one association may propose (PS3.8 §9.3.2.2: context IDs 1-255, odd).
MAX_CONTEXTS = 128


# -- the one error -------------------------------------------------------------------------------------------


class DeliveryError(InteropError):
    """A destination did not take a delivery. ``reason`` says why in the peer's terms; ``retryable`` says
    whether the same delivery may succeed later (see the module's table)."""

    http_status = 502  # Bad Gateway: an upstream peer failed (when the API reports a delivery)
    fhir_code = "transient"

    def __init__(self, destination: str, reason: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None, sop_instance_uids: Sequence[str] = ()) -> None:
        super().__init__(f"{destination}: {reason}")
        self.destination = destination
        self.reason = reason
        self.retryable = retryable
        #: The peer's status code (HTTP status, or the first failing DIMSE status), where there was one.
        self.status = status
        #: Seconds the peer asked us to wait (HTTP ``Retry-After``), where it said.
        self.retry_after = retry_after
        #: SOP Instance UIDs the peer did not store (DICOM kinds), where known.
        self.sop_instance_uids = tuple(sop_instance_uids)

    def __repr__(self) -> str:
        return f"DeliveryError({self.destination!r}, {self.reason!r}, retryable={self.retryable})"


# -- configuration ----------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientTlsSettings(_Model):
    """TLS as a client (BCP 195 / RFC 9325: TLS 1.2 or later): whom to trust, and our own certificate
    where the peer asks for one (mutual TLS; DICOM: PS3.15 Annex B)."""

    #: CA certificates (PEM) the peer's certificate must chain to; default: the system's trust store.
    ca_file: Path | None = None
    #: Our client certificate and its key (PEM), for peers that require one.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Check that the peer's certificate names the host we connect to.
    check_hostname: bool = True

    @model_validator(mode="after")
    def _files(self) -> ClientTlsSettings:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"tls.{name} {path} is not a readable file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together (our client certificate and its key)")
        return self


def client_context(tls: ClientTlsSettings) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` for connecting to a peer with these settings."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.check_hostname
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


class NoAuth(_Model):
    kind: Literal["none"] = "none"


class BearerAuth(_Model):
    """A static bearer token (RFC 6750), e.g. one minted by ``interop token`` on the peer."""

    kind: Literal["bearer"]
    token: SecretStr


class BasicAuth(_Model):
    """HTTP Basic authentication (RFC 7617), e.g. an Orthanc ``RegisteredUsers`` entry."""

    kind: Literal["basic"]
    username: str
    password: SecretStr


class SmartBackendAuth(_Model):
    """SMART Backend Services: the client asks ``token_url`` for an access token with a JWT signed by its
    private key (``client_credentials`` grant, ``private_key_jwt``; the EHR knows the public key from the
    client's registration, usually as a JWKS)."""

    kind: Literal["smart-backend"]
    token_url: str
    client_id: str = Field(min_length=1)
    #: The private key (PEM; RSA for RS384, EC P-384 for ES384).
    private_key_file: Path
    #: ``kid`` of the key in the client's JWKS; default: the key's RFC 7638 thumbprint.
    key_id: str | None = None
    algorithm: Literal["RS384", "ES384"] = "RS384"
    #: Scopes asked for (SMART v2 system scopes), e.g. ``system/DiagnosticReport.cu system/Observation.cu``.
    scope: str = "system/*.cruds"

    @field_validator("token_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "token_url")

    @model_validator(mode="after")
    def _key_fits_algorithm(self) -> SmartBackendAuth:
        load_signing_key(self)  # raises ValueError with the reason
        return self


def load_signing_key(auth: SmartBackendAuth) -> Any:
    """The joserfc key in ``private_key_file``, checked against ``algorithm``; ValueError if it does not fit."""
    from joserfc.jwk import ECKey, RSAKey

    path = Path(auth.private_key_file)
    if not path.is_file():
        raise ValueError(f"auth.private_key_file {path} is not a readable file")
    pem = path.read_bytes()
    try:
        if auth.algorithm == "RS384":
            key: Any = RSAKey.import_key(pem)
        else:
            key = ECKey.import_key(pem)
    except Exception as exc:  # joserfc raises several types for a PEM of the wrong kind
        kind = "an RSA" if auth.algorithm == "RS384" else "an EC P-384"
        raise ValueError(f"auth.private_key_file {path} is not {kind} private key ({auth.algorithm}): {exc}") from exc
    if not key.is_private:
        raise ValueError(f"auth.private_key_file {path} holds a public key; the private key is needed")
    if auth.algorithm == "ES384" and key.curve_name != "P-384":
        raise ValueError(f"auth.private_key_file {path} is an EC {key.curve_name} key; ES384 needs P-384")
    return key


HttpAuth = Annotated[NoAuth | BearerAuth | BasicAuth, Field(discriminator="kind")]
FhirAuth = Annotated[NoAuth | BearerAuth | SmartBackendAuth, Field(discriminator="kind")]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _http_url(v: str, what: str) -> str:
    if not re.match(r"^https?://[^/\s]+", v):
        raise ValueError(f"{what} must be an http:// or https:// URL, not {v!r}")
    return v.rstrip("/")


class _DestinationBase(_Model):
    #: How results, logs and the API name this destination (letters, digits, ``_ . -``).
    name: str
    enabled: bool = True
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    #: Attempts before a result is dead-lettered for this destination.
    max_attempts: int = Field(10, ge=1)
    #: How long a result may wait for this destination before it is dead-lettered (default: one day).
    give_up_after_seconds: float = Field(86400.0, gt=0)
    #: Seconds for each network step (connect, each response).
    timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("destination name: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
        return v


def _ae_title(v: str) -> str:
    if not v or len(v) > 16 or "\\" in v or not v.isprintable() or not v.strip():
        raise ValueError("AE title must be 1-16 printable characters without backslash (PS3.5 AE VR)")
    return v


class DicomDestinationConfig(_DestinationBase):
    """A C-STORE SCP (a PACS)."""

    kind: Literal["dicom"]
    #: The PACS's (called) AE title.
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    #: Our (calling) AE title, as the PACS knows us (its auto-routing must recognise it to not bounce results).
    calling_ae: str = "INTEROP"
    tls: ClientTlsSettings | None = None

    @field_validator("ae_title", "calling_ae")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _ae_title(v)


class DicomwebDestinationConfig(_DestinationBase):
    """A STOW-RS service (PS3.18 §10.5); ``url`` is the DICOMweb base, e.g. ``http://pacs:8042/dicom-web``."""

    kind: Literal["dicomweb"]
    url: str
    auth: HttpAuth = Field(default_factory=NoAuth)
    tls: ClientTlsSettings | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "url")


class FhirDestinationConfig(_DestinationBase):
    """A FHIR R4 server that takes transaction Bundles; ``base_url`` is its service base, e.g.
    ``https://ehr.example.org/fhir``."""

    kind: Literal["fhir"]
    base_url: str
    auth: FhirAuth = Field(default_factory=NoAuth)
    tls: ClientTlsSettings | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "base_url")


class WebhookDestinationConfig(_DestinationBase):
    """An HTTP endpoint that takes a JSON POST."""

    kind: Literal["webhook"]
    url: str
    #: Extra request headers (e.g. an API key).
    headers: dict[str, str] = Field(default_factory=dict)
    tls: ClientTlsSettings | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "url")


DestinationConfig = Annotated[
    DicomDestinationConfig | DicomwebDestinationConfig | FhirDestinationConfig | WebhookDestinationConfig,
    Field(discriminator="kind"),
]


# -- the clients -----------------------------------------------------------------------------------------------


@runtime_checkable
class Destination(Protocol):
    """A configured destination. Each kind adds its one delivery method (``send``, ``transaction``, ``post``)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def config(self) -> Any: ...

    def close(self) -> None: ...


class _Named:
    kind: ClassVar[str]
    _config: Any

    @property
    def config(self) -> Any:
        return self._config

    @property
    def name(self) -> str:
        return str(self._config.name)

    def _error(self, reason: str, *, retryable: bool, **kw: Any) -> DeliveryError:
        return DeliveryError(self.name, reason, retryable=retryable, **kw)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# ---- DICOM (C-STORE) -------------------------------------------------------------------------------------------

#: DIMSE failure statuses worth trying again: out of resources (PS3.4 B.2.3), resource limitation and
#: processing failure (PS3.7 C.4.2, C.5.x).
_RETRYABLE_DIMSE = frozenset({0x0213, 0x0110}) | frozenset(range(0xA700, 0xA800))


def dimse_status_text(status: int) -> str:
    """``0xA700 Refused: Out of Resources``: the code and its meaning in the Storage Service Class."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", "unknown status"))[1]
    return f"0x{status:04X} {meaning}"


def dimse_status_retryable(status: int) -> bool:
    return status in _RETRYABLE_DIMSE


#: Verification SOP Class (PS3.4 Annex A).
VERIFICATION = "1.2.840.10008.1.1"


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(ts)) if ts else ExplicitVRLittleEndian


def _with_file_meta(ds: Dataset) -> Dataset:
    """``ds`` ready to go on the wire: ``ds`` itself when nothing needs fixing, else a shallow copy (the
    caller's data set is never changed) that

    * names its transfer syntax (Explicit VR Little Endian when it has no file meta: what an in-memory data
      set is written as);
    * in an encapsulated (compressed) transfer syntax, gives Pixel Data an undefined length (PS3.5 A.4).
      ``dcmwrite`` does that by itself, but pynetdicom encodes the data set without it, and a data set made
      in memory (highdicom's SCImage) otherwise goes out with a defined length that dcmtk-based SCPs such
      as Orthanc cannot read (the association then times out)."""
    meta = getattr(ds, "file_meta", None)
    has_ts = meta is not None and bool(meta.get("TransferSyntaxUID"))
    pixel = ds["PixelData"] if "PixelData" in ds else None  # noqa: SIM401 (the element, not its value)
    fix_pixels = (has_ts and _transfer_syntax(ds).is_encapsulated and pixel is not None
                  and not pixel.is_undefined_length)
    if has_ts and not fix_pixels:
        return ds
    out = Dataset()
    out.update(ds)  # its own element dict (``Dataset.copy()`` would share the caller's), the same elements
    if meta is not None:
        out.file_meta = meta
    if not has_ts:
        out.file_meta = FileMetaDataset()
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        out.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if fix_pixels and pixel is not None:
        out["PixelData"] = DataElement(pixel.tag, pixel.VR, pixel.value, is_undefined_length=True)
    return out


def presentation_contexts(datasets: Sequence[Dataset]) -> list[tuple[str, list[str]]]:
    """The contexts to propose for these data sets: per SOP class, one context for each compressed transfer
    syntax in use (on its own, so the SCP cannot pick another for it) and one with the uncompressed syntaxes
    (Explicit then Implicit VR Little Endian, plus any other uncompressed one in use)."""
    by_class: dict[str, list[UID]] = {}
    for ds in datasets:
        syntaxes = by_class.setdefault(str(ds.SOPClassUID), [])
        ts = _transfer_syntax(ds)
        if ts not in syntaxes:
            syntaxes.append(ts)
    out: list[tuple[str, list[str]]] = []
    for sop_class, syntaxes in by_class.items():
        for ts in syntaxes:
            if ts.is_compressed:
                out.append((sop_class, [ts]))
        plain = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        plain += [ts for ts in syntaxes if not ts.is_compressed and ts not in plain]
        out.append((sop_class, [str(ts) for ts in plain]))
    return out


class _LogCapture(logging.Handler):
    """pynetdicom logs why an association failed (connect errors, A-ASSOCIATE-RJ result/source/reason) but
    keeps none of it; this collects its records so the reason can be told."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, thread_ids: set[int | None]) -> list[str]:
        return [r.getMessage() for r in self.records if r.thread in thread_ids]


@contextmanager
def _pynetdicom_log() -> Iterator[_LogCapture]:
    handler = _LogCapture()
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _nodelay(event: Any) -> None:
    """TCP_NODELAY on our side of the association (DESIGN: Nagle costs ~40 ms a round trip on loopback)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_CONTEXT_RESULT = {1: "rejected by the SCP's user", 2: "rejected, no reason given",
                   3: "abstract syntax (SOP class) not supported", 4: "transfer syntaxes not supported"}


class DicomDestination(_Named):
    """C-STORE SCU to one PACS (PS3.4 Annex B): all data sets of a send over one association."""

    kind = "dicom"

    def __init__(self, config: DicomDestinationConfig) -> None:
        self._config = config
        self._ssl = client_context(config.tls) if config.tls is not None else None

    @property
    def _where(self) -> str:
        c = self._config
        return f"{c.ae_title}@{c.host}:{c.port}" + (" (TLS)" if self._ssl else "")

    def send(self, datasets: Sequence[Dataset]) -> None:
        """Store every data set; raise :class:`DeliveryError` naming each one the PACS did not take.
        Warning statuses (B000, B006, B007) count as stored."""
        if not datasets:
            return
        items = [_with_file_meta(ds) for ds in datasets]
        contexts = presentation_contexts(items)
        if len(contexts) > MAX_CONTEXTS:
            raise self._error(f"{len(contexts)} presentation contexts needed, one association takes "
                              f"{MAX_CONTEXTS}: send fewer SOP classes at once", retryable=False)
        assoc = self._associate(contexts)
        try:
            self._store_all(assoc, items)
        finally:
            if assoc.is_established:
                assoc.release()

    def _associate(self, contexts: list[tuple[str, list[str]]]) -> Any:
        """An established association proposing ``contexts``; :class:`DeliveryError` saying why not."""
        from pynetdicom import AE, evt

        c = self._config
        ae = AE(ae_title=c.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = c.timeout_seconds
        ae.connection_timeout = c.timeout_seconds
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        tls_args = (self._ssl, c.host) if self._ssl is not None else None
        connected = threading.Event()

        def on_open(event: Any) -> None:
            connected.set()
            _nodelay(event)

        try:
            with _pynetdicom_log() as captured:
                assoc = ae.associate(c.host, c.port, ae_title=c.ae_title, tls_args=tls_args,
                                     evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
        except OSError as exc:  # the address did not resolve (pynetdicom resolves before connecting)
            raise self._error(f"could not connect to {c.host}:{c.port} ({exc}); check host", retryable=True) from exc
        if not assoc.is_established:
            # A-ASSOCIATE negotiation runs in this thread, the transport connect in the DUL's.
            threads = {threading.get_ident(), assoc.ident, assoc.dul.ident}
            raise self._association_failed(assoc, captured.messages(threads), connected.is_set())
        return assoc

    def check(self) -> str:
        """C-ECHO (PS3.4 Annex A) as the results will be sent (calling AE, TLS): what ``interop doctor``
        reports; :class:`DeliveryError` when the PACS can't be reached or refuses us."""
        assoc = self._associate([(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])])
        try:
            if not assoc.accepted_contexts:
                raise self._error(f"{self._where} accepted the association but not Verification", retryable=False)
            rsp = assoc.send_c_echo()
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        finally:
            if assoc.is_established:
                assoc.release()
        if status != 0:
            raise self._error(f"C-ECHO to {self._where}: " + ("no response" if status is None
                                                              else f"status 0x{status:04X}"), retryable=True)
        return f"C-ECHO to {self._where} as {self._config.calling_ae}: success"

    def _store_all(self, assoc: Any, items: list[Dataset]) -> None:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        refused = {str(cx.abstract_syntax): _CONTEXT_RESULT.get(cx.result, f"result {cx.result}")
                   for cx in assoc.rejected_contexts}
        failures: list[tuple[str, str, bool, int | None]] = []  # (sop uid, reason, retryable, status)
        for i, ds in enumerate(items):
            sop_class, sop_uid = UID(str(ds.SOPClassUID)), str(ds.SOPInstanceUID)
            what = f"{sop_class.name} {sop_uid}"
            ts = _transfer_syntax(ds)
            if not any(a == sop_class for a, _ in accepted):
                why = refused.get(str(sop_class), "not accepted")
                failures.append((sop_uid, f"{what}: the PACS refused the presentation context ({why})", False, None))
                continue
            to_send = ds
            if ts.is_compressed and (str(sop_class), str(ts)) not in accepted:
                # The PACS takes this SOP class, but not in this compressed syntax: send it decompressed.
                try:
                    to_send = copy.deepcopy(ds)
                    to_send.decompress()
                except Exception as exc:  # a pixel-data handler error of any kind
                    failures.append((sop_uid, f"{what}: the PACS does not accept {ts.name} and decompressing "
                                              f"failed: {exc}", False, None))
                    continue
                log.info("%s: %s does not accept %s for %s; sent decompressed", self.name, self._where, ts.name,
                         what)
            try:
                rsp = assoc.send_c_store(to_send)
            except (ValueError, AttributeError) as exc:  # no context after all, or the data set cannot be encoded
                failures.append((sop_uid, f"{what}: could not be sent: {exc}", False, None))
                continue
            except RuntimeError as exc:  # the association ended under us
                failures.extend((str(d.SOPInstanceUID), f"association ended before the C-STORE: {exc}", True, None)
                                for d in items[i:])
                break
            status = rsp.get("Status") if rsp is not None else None
            if status is None:
                rest = [str(d.SOPInstanceUID) for d in items[i:]]
                why = "the association was aborted" if assoc.is_aborted else \
                    f"no C-STORE response within {self._config.timeout_seconds:g} s"
                failures.append((rest[0], f"{what}: {why}", True, None))
                failures.extend((u, "not sent: the association ended", True, None) for u in rest[1:])
                break
            status = int(status)
            from pynetdicom.status import code_to_category

            category = code_to_category(status)
            if category in ("Success", "Warning"):
                if category == "Warning":
                    log.info("%s: %s stored %s with warning %s", self.name, self._where, what,
                             dimse_status_text(status))
                continue
            comment = rsp.get("ErrorComment")
            failures.append((sop_uid, f"{what}: C-STORE status {dimse_status_text(status)}"
                                      + (f" ('{comment}')" if comment else ""),
                             dimse_status_retryable(status), status))
        if failures:
            retryable = all(f[2] for f in failures)
            statuses = [f[3] for f in failures if f[3] is not None]
            head = f"{self._where} did not store {len(failures)} of {len(items)} instance(s): "
            raise self._error(head + "; ".join(f[1] for f in failures), retryable=retryable,
                              status=statuses[0] if statuses else None,
                              sop_instance_uids=[f[0] for f in failures])

    def _association_failed(self, assoc: Any, messages: list[str], connected: bool) -> DeliveryError:
        c = self._config
        said = " ".join(messages)
        if not connected and not any(m.startswith("TCP Initialisation Error") for m in messages):
            # pynetdicom's log did not reach us (its logger silenced above ERROR): ask the network once more.
            messages = [*messages, f"TCP Initialisation Error: {self._probe()}"]
        if assoc.is_rejected:
            result = next((m for m in messages if m.startswith("Result:")), "")
            reason = next((m.removeprefix("Reason: ") for m in messages if m.startswith("Reason:")), "")
            hint = ""
            if "called ae" in reason.lower():
                hint = f": check ae_title '{c.ae_title}'"
            elif "calling ae" in reason.lower():
                hint = f": the PACS must know our calling AE title '{c.calling_ae}' (and our address)"
            said = "; ".join(x for x in (result, reason) if x) or "no reason given"
            return self._error(f"association rejected by {self._where}: {said}{hint}", retryable=True)
        tcp = next((m.removeprefix("TCP Initialisation Error: ") for m in messages
                    if m.startswith("TCP Initialisation Error")), None)
        if tcp is not None:
            return self._error(f"could not connect to {c.host}:{c.port} ({tcp}); is the PACS running and "
                               f"listening there{' with TLS' if self._ssl else ''}?", retryable=True)
        if "No accepted presentation contexts" in said:
            classes = sorted({UID(str(cx.abstract_syntax)).name for cx in assoc.rejected_contexts})
            return self._error(f"{self._where} accepted none of the proposed presentation contexts "
                               f"({', '.join(classes)}): it does not store these object types", retryable=False)
        if "ACSE timeout" in said:
            return self._error(f"no answer to the association request from {self._where} within "
                               f"{c.timeout_seconds:g} s", retryable=True)
        if assoc.is_aborted:
            return self._error(f"association aborted by {self._where} during negotiation"
                               + " (is that a DICOM port, with TLS on both sides or neither?)", retryable=True)
        return self._error(f"association with {self._where} not established ({said or 'no reason logged'})",
                           retryable=True)

    def _probe(self) -> str:
        c = self._config
        try:
            with socket.create_connection((c.host, c.port), timeout=min(c.timeout_seconds, 5)):
                return "the connection failed" + (" during the TLS handshake" if self._ssl else "")
        except OSError as exc:
            return str(exc) or type(exc).__name__

    def close(self) -> None:
        pass


# ---- HTTP kinds -----------------------------------------------------------------------------------------------


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _outcome_text(outcome: dict[str, Any]) -> str:
    parts = []
    for issue in outcome.get("issue") or []:
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        where = ",".join(issue.get("expression") or issue.get("location") or [])
        head = f"{issue.get('severity', '?')} {issue.get('code', '?')}: {text}"
        parts.append(head + (f" at {where}" if where else ""))
    return "; ".join(parts)


def _failed_sops(body: Any) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, FailureReason) of each FailedSOPSequence item of a STOW-RS response (PS3.18 §10.5.3,
    DICOM JSON: (0008,1198) items with (0008,1155) and (0008,1197))."""
    if not isinstance(body, dict):
        return []
    items = (body.get("00081198") or {}).get("Value") or []
    out = []
    for item in items:
        uid = ((item.get("00081155") or {}).get("Value") or ["?"])[0]
        reason = ((item.get("00081197") or {}).get("Value") or [None])[0]
        out.append((str(uid), int(reason) if reason is not None else None))
    return out


def peer_message(resp: httpx.Response) -> str:
    """What the peer said, in its own words: an OperationOutcome's issues, an OAuth error, a STOW
    FailedSOPSequence, Orthanc's ``Message``/``Details``, or the start of the body."""
    try:
        body = resp.json()
    except ValueError:
        text = " ".join(resp.text.split())
        return text[:500] + ("…" if len(text) > 500 else "")
    if isinstance(body, dict):
        if body.get("resourceType") == "OperationOutcome":
            return "OperationOutcome: " + _outcome_text(body)
        if "error" in body and isinstance(body["error"], str):
            return body["error"] + (f": {body['error_description']}" if body.get("error_description") else "")
        failed = _failed_sops(body)
        if failed:
            return "FailedSOPSequence: " + "; ".join(
                f"{uid} {dimse_status_text(code) if code is not None else '(no reason)'}" for uid, code in failed)
        if "Message" in body or "Details" in body:  # Orthanc's error body
            return " - ".join(str(body[k]) for k in ("Message", "Details") if body.get(k))
    text = json.dumps(body)
    return text[:500] + ("…" if len(text) > 500 else "")


_HINT = {401: "check the destination's credentials", 403: "the credentials lack permission (scopes?)",
         404: "check the URL", 405: "check the URL (the endpoint does not take POST)",
         413: "the payload is larger than the peer takes", 415: "the peer does not take this media type"}


def http_status_retryable(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


class _HttpDestination(_Named):
    """The HTTP kinds' shared plumbing: one pooled httpx client, errors turned into DeliveryError."""

    def __init__(self, config: Any, *, transport: httpx.BaseTransport | None = None,
                 client: httpx.Client | None = None) -> None:
        self._config = config
        tls = getattr(config, "tls", None)
        self._verify: ssl.SSLContext | bool = client_context(tls) if tls is not None else True
        self._client = client or httpx.Client(timeout=config.timeout_seconds, verify=self._verify,
                                              transport=transport, follow_redirects=False)

    def _request(self, method: str, url: str, what: str, **kw: Any) -> httpx.Response:
        try:
            return self._client.request(method, url, **kw)
        except httpx.TimeoutException as exc:
            raise self._error(f"{what}: no answer from {url} within {self._config.timeout_seconds:g} s "
                              f"({type(exc).__name__})", retryable=True) from exc
        except httpx.HTTPError as exc:  # connect refused/reset, DNS, TLS, protocol errors
            raise self._error(f"{what}: could not reach {url}: {type(exc).__name__}: {exc or 'connection failed'}",
                              retryable=True) from exc

    def _refused(self, what: str, resp: httpx.Response, *, retryable: bool | None = None) -> DeliveryError:
        status = resp.status_code
        hint = _HINT.get(status, "")
        if 300 <= status < 400:
            hint = f"redirected to {resp.headers.get('Location', '?')}: configure the final URL"
        text = f"{what}: HTTP {status} {resp.reason_phrase} from {resp.request.url}"
        said = peer_message(resp)
        if said:
            text += f": {said}"
        if hint:
            text += f" ({hint})"
        return self._error(text, retryable=http_status_retryable(status) if retryable is None else retryable,
                           status=status, retry_after=_retry_after(resp))

    def close(self) -> None:
        self._client.close()


def _static_auth(auth: Any) -> tuple[dict[str, str], httpx.Auth | None]:
    if isinstance(auth, BearerAuth):
        return {"Authorization": f"Bearer {auth.token.get_secret_value()}"}, None
    if isinstance(auth, BasicAuth):
        return {}, httpx.BasicAuth(auth.username, auth.password.get_secret_value())
    return {}, None


def part10(ds: Dataset) -> bytes:
    """The data set as a DICOM Part 10 file (the body part of ``application/dicom``)."""
    buf = io.BytesIO()
    dcmwrite(buf, _with_file_meta(ds), enforce_file_format=True)
    return buf.getvalue()


class DicomwebDestination(_HttpDestination):
    """STOW-RS client (PS3.18 §10.5): every data set of a send in one ``multipart/related`` request."""

    kind = "dicomweb"

    def __init__(self, config: DicomwebDestinationConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(config, transport=transport)
        self._headers, self._auth = _static_auth(config.auth)

    def check(self) -> str:
        """A QIDO-RS search for one study with the destination's credentials: the service answers and lets
        us in (``interop doctor``); :class:`DeliveryError` otherwise."""
        url = self._config.url.rstrip("/") + "/studies"
        what = "DICOMweb search"
        resp = self._request("GET", url, what, params={"limit": "1"},
                             headers={**self._headers, "Accept": "application/dicom+json"},
                             auth=self._auth or httpx.USE_CLIENT_DEFAULT)
        if resp.status_code not in (200, 204):
            raise self._refused(what, resp)
        return f"QIDO-RS {url}: HTTP {resp.status_code}"

    def send(self, datasets: Sequence[Dataset]) -> None:
        """Store every data set; raise :class:`DeliveryError` on an HTTP error or a FailedSOPSequence item."""
        if not datasets:
            return
        boundary = uuid.uuid4().hex
        body = bytearray()
        for ds in datasets:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            body += part10(ds) + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        url = f"{self._config.url}/studies"
        headers = {**self._headers, "Accept": "application/dicom+json",
                   "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
        what = f"STOW-RS of {len(datasets)} instance(s)"
        resp = self._request("POST", url, what, content=bytes(body), headers=headers,
                             auth=self._auth or httpx.USE_CLIENT_DEFAULT)
        try:
            answer: Any = resp.json()
        except ValueError:
            answer = None
        failed = _failed_sops(answer)
        if failed:
            codes = [code for _, code in failed]
            retryable = http_status_retryable(resp.status_code) or all(
                code is not None and dimse_status_retryable(code) for code in codes)
            listed = "; ".join(f"{uid}: {dimse_status_text(code) if code is not None else 'no FailureReason'}"
                               for uid, code in failed)
            raise self._error(f"{what}: HTTP {resp.status_code} from {url}, {len(failed)} of {len(datasets)} "
                              f"failed (FailedSOPSequence): {listed}", retryable=retryable,
                              status=resp.status_code, retry_after=_retry_after(resp),
                              sop_instance_uids=[uid for uid, _ in failed])
        if resp.status_code >= 300 or resp.status_code < 200:
            raise self._refused(what, resp)
        stored = {str(((i.get("00081155") or {}).get("Value") or [""])[0])
                  for i in ((answer or {}).get("00081199") or {}).get("Value") or []} if isinstance(answer, dict) \
            else set()
        missing = [str(ds.SOPInstanceUID) for ds in datasets if str(ds.SOPInstanceUID) not in stored]
        if isinstance(answer, dict) and missing:
            raise self._error(f"{what}: HTTP {resp.status_code} from {url} but the ReferencedSOPSequence lacks "
                              f"{', '.join(missing)}", retryable=True, status=resp.status_code,
                              sop_instance_uids=missing)


class _SmartToken:
    """Access tokens from a SMART Backend Services token endpoint, through authlib's httpx ``OAuth2Client``
    with a ``private_key_jwt`` client assertion (RFC 7523 §2.2; SMART: ``kid`` and ``typ`` in the header,
    ``exp`` at most 5 minutes ahead, a fresh ``jti`` each time). The client keeps the token and fetches a
    new one ``TOKEN_LEEWAY_SECONDS`` before ``expires_in`` runs out."""

    def __init__(self, owner: _HttpDestination, auth: SmartBackendAuth, *, verify: ssl.SSLContext | bool,
                 timeout: float, transport: httpx.BaseTransport | None) -> None:
        from authlib.integrations.httpx_client import OAuth2Client
        from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign

        key = load_signing_key(auth)
        kid = auth.key_id or key.thumbprint()

        class _Assertion(PrivateKeyJWT):
            """authlib's PrivateKeyJWT with SMART's short assertion lifetime (its default is one hour)."""

            def sign(self, client: Any, token_endpoint: str) -> str:
                return str(private_key_jwt_sign(client.client_secret, client_id=client.client_id,
                                                token_endpoint=token_endpoint, alg=self.alg,
                                                header={"kid": kid, "typ": "JWT"},
                                                expires_in=ASSERTION_LIFETIME_SECONDS))

        self.owner = owner
        self.auth = auth
        self.client = OAuth2Client(
            client_id=auth.client_id, client_secret=key, token_endpoint_auth_method="private_key_jwt",
            scope=auth.scope, token_endpoint=auth.token_url, grant_type="client_credentials",
            leeway=TOKEN_LEEWAY_SECONDS, timeout=timeout, verify=verify, transport=transport,
            follow_redirects=False,
        )
        self.client.register_client_auth_method(_Assertion(auth.token_url, alg=auth.algorithm))

    def fetch(self) -> None:
        """Ask the token endpoint for a new access token (the client keeps it)."""
        from authlib.common.errors import AuthlibBaseError

        what = f"SMART token request to {self.auth.token_url} as client '{self.auth.client_id}'"
        try:
            token = self.client.fetch_token()
        except httpx.HTTPStatusError as exc:
            raise self.owner._refused(what, exc.response) from exc
        except httpx.TimeoutException as exc:
            raise self.owner._error(f"{what}: no answer within {self.owner.config.timeout_seconds:g} s",
                                    retryable=True) from exc
        except httpx.HTTPError as exc:
            raise self.owner._error(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from exc
        except AuthlibBaseError as exc:  # the endpoint's OAuth error answer (RFC 6749 §5.2)
            retryable = exc.error in ("temporarily_unavailable", "server_error")
            hint = " (is the public key of private_key_file, kid and algorithm registered for this client?)" \
                if exc.error == "invalid_client" else ""
            raise self.owner._error(f"{what} refused: {exc.error}: {exc.description or ''}{hint}",
                                    retryable=retryable) from exc
        except ValueError as exc:  # a 4xx whose body is not a JSON object
            raise self.owner._error(f"{what}: {exc}", retryable=False) from exc
        if not token or "access_token" not in token:
            raise self.owner._error(f"{what}: the answer has no access_token", retryable=False)
        log.info("%s: SMART access token for '%s' (scope %r, expires in %s s)", self.owner.name,
                 self.auth.client_id, token.get("scope", self.auth.scope), token.get("expires_in", "?"))

    def request(self, method: str, url: str, what: str, **kw: Any) -> httpx.Response:
        """A request with a current access token; on 401 one new token and one more try."""
        token = self.client.token
        if token is None or token.is_expired(leeway=TOKEN_LEEWAY_SECONDS):
            self.fetch()
        resp = self._send(method, url, what, **kw)
        if resp.status_code == 401:
            log.info("%s: 401 from %s; fetching a new SMART token once", self.owner.name, url)
            self.fetch()
            resp = self._send(method, url, what, **kw)
        return resp

    def _send(self, method: str, url: str, what: str, **kw: Any) -> httpx.Response:
        from authlib.common.errors import AuthlibBaseError

        try:
            return self.owner._request(method, url, what, **kw)
        except AuthlibBaseError as exc:  # expired token whose refresh failed inside authlib
            raise self.owner._error(f"{what}: token refresh failed: {exc.error}: {exc.description}",
                                    retryable=False) from exc


class FhirDestination(_HttpDestination):
    """FHIR R4 client: one transaction Bundle per call (http.html §3.1.0.11)."""

    kind = "fhir"

    def __init__(self, config: FhirDestinationConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self._lock = threading.Lock()  # the SMART token is shared state
        self._smart: _SmartToken | None = None
        if isinstance(config.auth, SmartBackendAuth):
            verify = client_context(config.tls) if config.tls is not None else True
            # The OAuth2Client is the FHIR HTTP client too: it puts the current token on every request.
            self._config = config
            self._smart = _SmartToken(self, config.auth, verify=verify, timeout=config.timeout_seconds,
                                      transport=transport)
            super().__init__(config, client=self._smart.client)
        else:
            super().__init__(config, transport=transport)
        self._headers, self._auth = _static_auth(config.auth)

    def _call(self, method: str, url: str, what: str, resource_type: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        """One FHIR interaction with the destination's credentials (a SMART backend token, fetched again once
        on 401; or the static auth): the 2xx status and the JSON ``resource_type`` answered, else
        DeliveryError."""
        headers = {**self._headers, "Accept": "application/fhir+json", **kw.pop("headers", {})}
        if self._smart is not None:
            with self._lock:
                resp = self._smart.request(method, url, what, headers=headers, **kw)
        else:
            resp = self._request(method, url, what, headers=headers, auth=self._auth or httpx.USE_CLIENT_DEFAULT,
                                 **kw)
        if not 200 <= resp.status_code < 300:
            raise self._refused(what, resp)
        try:
            body = resp.json()
        except ValueError as exc:
            raise self._error(f"{what}: HTTP {resp.status_code} from {url} but the body is not JSON",
                              retryable=False, status=resp.status_code) from exc
        if not isinstance(body, dict) or body.get("resourceType") != resource_type:
            raise self._error(f"{what}: HTTP {resp.status_code} from {url} but no {resource_type} came back",
                              retryable=False, status=resp.status_code)
        return resp.status_code, body

    def capabilities(self) -> dict[str, Any]:
        """``GET [base]/metadata`` with the destination's credentials (with SMART backend services a token is
        fetched first, which checks the key and the client registration): the server's CapabilityStatement."""
        return self._call("GET", self._config.base_url.rstrip("/") + "/metadata", "FHIR capabilities",
                          "CapabilityStatement")[1]

    def check(self) -> str:
        """The EHR's CapabilityStatement: FHIR R4 (4.0.x) and transactions supported (``interop doctor``)."""
        cap = self.capabilities()
        version = str(cap.get("fhirVersion", "?"))
        if not version.startswith("4.0"):
            raise self._error(f"{self._config.base_url} speaks FHIR {version}, not R4 (4.0.x)", retryable=False)
        rest = [r for r in cap.get("rest") or [] if r.get("mode") == "server"]
        interactions = {i.get("code") for r in rest for i in r.get("interaction") or []}
        if rest and interactions and "transaction" not in interactions:
            raise self._error(f"{self._config.base_url} does not list the transaction interaction", retryable=False)
        software = (cap.get("software") or {}).get("name", "")
        auth = " (SMART backend token granted)" if self._smart is not None else ""
        return f"FHIR {version} at {self._config.base_url}" + (f", {software}" if software else "") + auth

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST the Bundle to the base; return the transaction-response Bundle. Every entry's
        ``response.status`` must be 2xx."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise self._error("not a transaction Bundle (resourceType Bundle, type transaction)", retryable=False)
        url = self._config.base_url
        what = f"FHIR transaction of {len(bundle.get('entry') or [])} entries"
        status_code, answer = self._call("POST", url, what, "Bundle", content=json.dumps(bundle).encode(),
                                         headers={"Content-Type": "application/fhir+json"})
        bad = []
        for i, entry in enumerate(answer.get("entry") or []):
            r = entry.get("response") or {}
            status = str(r.get("status", ""))
            if status[:1] != "2":
                said = _outcome_text(r["outcome"]) if isinstance(r.get("outcome"), dict) else ""
                bad.append(f"entry {i}: {status or 'no response.status'}" + (f" ({said})" if said else ""))
        if bad:
            raise self._error(f"{what}: {url} answered {status_code} but " + "; ".join(bad),
                              retryable=False, status=status_code)
        return answer


class WebhookDestination(_HttpDestination):
    """A JSON POST to an HTTP endpoint, with an ``Idempotency-Key`` so the receiver can drop repeats."""

    kind = "webhook"

    def __init__(self, config: WebhookDestinationConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(config, transport=transport)

    def post(self, payload: dict[str, Any], idempotency_key: str) -> None:
        if not idempotency_key:
            raise self._error("an Idempotency-Key is needed", retryable=False)
        headers = {**self._config.headers, "Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        what = f"webhook POST (Idempotency-Key {idempotency_key})"
        resp = self._request("POST", self._config.url, what, content=json.dumps(payload).encode(), headers=headers)
        if resp.status_code == 409:  # Idempotency-Key draft §2.7: a request with this key is still in flight
            raise self._refused(what, resp, retryable=True)
        if not 200 <= resp.status_code < 300:
            raise self._refused(what, resp)


def destination_from_config(config: Any, *, transport: httpx.BaseTransport | None = None) -> Destination:
    """The client for a destination's configuration (``transport`` replaces the network for HTTP kinds)."""
    if isinstance(config, DicomDestinationConfig):
        return DicomDestination(config)
    if isinstance(config, DicomwebDestinationConfig):
        return DicomwebDestination(config, transport=transport)
    if isinstance(config, FhirDestinationConfig):
        return FhirDestination(config, transport=transport)
    if isinstance(config, WebhookDestinationConfig):
        return WebhookDestination(config, transport=transport)
    raise TypeError(f"not a destination configuration: {type(config).__name__}")


__all__ = [
    "BasicAuth",
    "BearerAuth",
    "ClientTlsSettings",
    "DeliveryError",
    "Destination",
    "DestinationConfig",
    "DicomDestination",
    "DicomDestinationConfig",
    "DicomwebDestination",
    "DicomwebDestinationConfig",
    "FhirDestination",
    "FhirDestinationConfig",
    "NoAuth",
    "SmartBackendAuth",
    "WebhookDestination",
    "WebhookDestinationConfig",
    "client_context",
    "destination_from_config",
]
