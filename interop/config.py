"""Settings for the node: ``INTEROP_*`` environment variables over an optional TOML file.

The TOML file is named by ``INTEROP_CONFIG`` (or ``interop serve --config FILE``, which sets it).
Nested sections use ``__`` in environment variables, e.g. ``INTEROP_DICOM__PORT=11113``.
Every default is safe for a single box: SQLite under the data directory, files on disk.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from interop.tls import TlsSettings
from interop.writeback.destinations import DestinationConfig

DuplicatePolicy = Literal["keep-first", "overwrite", "reject"]


class _Section(BaseModel):
    """A configuration section: unknown keys are errors (a typo must not silently keep a default)."""

    model_config = ConfigDict(extra="forbid")


class DicomSettings(_Section):
    """The DIMSE listener (PS3.7, PS3.8)."""

    ae_title: str = "INTEROP"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    #: Calling AE titles allowed to associate; empty means any AE title.
    allowed_aes: list[str] = Field(default_factory=list)
    #: Peer IP addresses allowed to associate; empty means any address.
    allowed_hosts: list[str] = Field(default_factory=list)
    max_associations: int = Field(16, ge=1)
    #: Largest P-DATA PDU we accept; 0 means no limit (fewer, larger PDUs: faster ingest).
    max_pdu_size: int = Field(0, ge=0)
    #: What to do when an instance arrives again with a *different* payload under the same SOP Instance UID.
    #: ``keep-first`` keeps the stored copy and answers warning 0xB006; ``overwrite`` replaces it;
    #: ``reject`` answers failure 0x0111 (Duplicate SOP Instance).
    duplicate_policy: DuplicatePolicy = "keep-first"
    #: How often an association's reactor polls its socket when idle (pynetdicom's default is 1 ms; each
    #: DIMSE message waits up to this long before it is read).
    poll_seconds: float = Field(0.0002, gt=0, le=0.1)
    #: Let an association's DIMSE reactor wake when a message arrives instead of after its fixed 1 ms sleep
    #: (see interop.dicom.listener._ReactorClock).
    wake_on_message: bool = True
    #: Seconds of network silence before an association is aborted.
    network_timeout: float = Field(60.0, gt=0)
    #: DICOM over TLS (PS3.15 Annex B, BCP 195): certificate, key; a CA to check client certificates.
    #: Without it: plain TCP.
    tls: TlsSettings | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae_title_valid(cls, v: str) -> str:
        if not v or len(v) > 16 or "\\" in v or not v.isprintable():
            raise ValueError("AE title must be 1-16 printable characters without backslash (PS3.5 AE VR)")
        return v


class HttpSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    #: Public base URL used in RetrieveURL / BulkDataURI; default derived from the request.
    public_url: str | None = None
    #: Origins whose browser apps may call this node (CORS): a SMART app served from elsewhere, or this node's
    #: worklist calling an EHR's token endpoint and FHIR server when this node is that EHR. Empty: none.
    cors_origins: list[str] = Field(default_factory=list)


class StudySettings(_Section):
    """Study assembly: when a study counts as ready for routing."""

    #: Seconds without a new instance (after the delivering association ends) before a study is ready.
    quiet_seconds: float = Field(5.0, ge=0)


class Hl7Settings(_Section):
    """The HL7 v2 MLLP listener (HL7 v2.5.1 Ch. 2; MLLP framing: Appendix C of the v2.5.1 implementation guide)."""

    host: str = "0.0.0.0"
    port: int = Field(2575, ge=0, le=65535)
    #: Largest MLLP frame accepted; a longer message is answered AR and discarded.
    max_message_bytes: int = Field(1 << 20, ge=1024)
    #: Seconds a connection may stay silent before it is closed.
    idle_timeout: float = Field(300.0, gt=0)
    #: IANA time zone of HL7 timestamps that carry no offset (v2.5.1 Ch. 2A DTM); default: this machine's zone.
    timezone: str | None = None
    #: FHIR ``Identifier.system`` for an HL7 assigning authority / namespace ID (e.g. ``{"HOSP": "urn:oid:..."}``);
    #: an authority not listed becomes ``urn:oid:<universal ID>`` (ISO) or ``urn:hl7v2:<namespace ID>``.
    identifier_systems: dict[str, str] = Field(default_factory=dict)
    #: MLLP over TLS (certificate, key; a CA to check client certificates). Without it: plain TCP.
    tls: TlsSettings | None = None
    #: Enhanced-mode messages asking only for an accept acknowledgment (MSH-15 given, MSH-16 empty or NE; HL7
    #: v2.5.1 §2.9.3) are answered ``CA`` once read, mapped and kept durably, and their FHIR resources are written
    #: right after by the applier. ``false``: every message is answered only after its resources are committed.
    accept_acknowledgments: bool = True
    #: Seconds the applier may give way to a burst of incoming messages before it writes their resources anyway.
    apply_max_lag: float = Field(2.0, ge=0)
    #: Accepted messages whose resources are not yet written, above which receiving waits for the applier.
    max_pending: int = Field(10_000, ge=1)

    @field_validator("timezone")
    @classmethod
    def _timezone_known(cls, v: str | None) -> str | None:
        if v is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Berlin)") from None
        return v


class AuthSettings(_Section):
    """Who may call the node over HTTP (interop.auth): the tokens it accepts and the authorization server it runs.

    Three kinds of bearer token are accepted, told apart by their ``iss``: HS256 tokens from ``interop token``
    (``issuer``/``audience`` below, for scripts and tests), RS256 tokens from the built-in authorization server
    (``server``), and tokens of each ``external`` OpenID Connect provider (checked against its JWKS)."""

    #: HMAC secret for tokens this node mints. Default: a random secret kept in ``<data_dir>/secret.key``.
    secret: str | None = None
    #: ``iss`` and ``aud`` of the HS256 tokens ``interop token`` mints.
    issuer: str = "interop"
    audience: str = "interop"
    #: Lifetime of access tokens (both kinds this node mints).
    token_ttl_seconds: int = Field(3600, gt=0)
    #: The built-in authorization server (SMART App Launch 2.x, OAuth 2.0 with PKCE, OpenID Connect).
    server: AuthServerSettings = Field(default_factory=lambda: AuthServerSettings())
    #: OpenID Connect providers whose tokens are accepted (an EHR's or the hospital's identity provider).
    external: list[ExternalIssuer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_issuers(self) -> AuthSettings:
        issuers = [e.issuer for e in self.external]
        if len(set(issuers)) != len(issuers) or self.issuer in issuers:
            raise ValueError("auth.external: each issuer once, and none equal to auth.issuer")
        return self


#: The roles of people (users of the built-in server, or the role claim of an external provider's token).
Role = Literal["radiologist", "physician", "technologist", "viewer", "admin"]


class AuthServerSettings(_Section):
    """The built-in authorization server at ``/auth`` (SMART App Launch 2.x; RFC 6749, RFC 7636, RFC 7523)."""

    #: Serve ``/auth/*`` and the SMART/OpenID discovery documents; off when only external providers are used.
    enabled: bool = True
    #: ``iss`` of the tokens it mints. Default: ``http.public_url``, else the base URL the request came to.
    issuer: str | None = None
    #: Audiences added to every token and accepted beside this node's FHIR base URL (``<base>/fhir``).
    audience: list[str] = Field(default_factory=list)
    #: Authorization codes are single-use and live this long (RFC 6749 §4.1.2 recommends at most 10 minutes).
    code_ttl_seconds: int = Field(60, gt=0, le=600)
    #: Refresh tokens for ``offline_access`` (rotated on every use).
    refresh_ttl_seconds: int = Field(30 * 24 * 3600, gt=0)
    #: The login session (SSO cookie); also the lifetime of ``online_access`` refresh tokens.
    session_ttl_seconds: int = Field(8 * 3600, gt=0)
    #: How long a launch id from ``interop launch`` stays usable.
    launch_ttl_seconds: int = Field(3600, gt=0)
    #: Create the public clients ``interop-worklist`` and ``interop-ohif`` at start-up when missing.
    default_clients: bool = True

    @field_validator("issuer")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError("auth.server.issuer must be an absolute http(s) URL")
        return v.rstrip("/") if v else v


class ExternalIssuer(_Section):
    """An OpenID Connect provider whose access tokens this node accepts (RFC 7519 §4.1, RFC 9068)."""

    #: Its ``iss`` exactly as in the tokens.
    issuer: str = Field(min_length=1)
    #: Where its signing keys are published (fetched when first needed, cached, fetched again on an unknown
    #: ``kid``); or a JWKS file for a provider this node cannot reach.
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    #: Accepted ``aud`` values (the token must name at least one).
    audience: list[str] = Field(min_length=1)
    #: Claim holding the person's role (a string or a list; the first known role wins) ...
    role_claim: str = "role"
    #: ... and the role of tokens that carry none (None: no role; such a token can't do what needs a role).
    default_role: Role | None = None
    #: Claim holding the SMART scopes (a space-separated string or a list, e.g. ``scp``).
    scope_claim: str = "scope"
    #: Clock skew allowed on ``exp``/``nbf``/``iat``.
    leeway_seconds: int = Field(30, ge=0, le=300)
    #: An unknown ``kid`` fetches the JWKS again at most this often.
    jwks_min_refresh_seconds: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _one_key_source(self) -> ExternalIssuer:
        if (self.jwks_uri is None) == (self.jwks_file is None):
            raise ValueError(f"auth.external {self.issuer!r}: give exactly one of jwks_uri and jwks_file")
        return self


Priority = Literal["stat", "routine"]


class StudyMatch(_Section):
    """DICOM attributes a study must have for a rule to fire; each list is any-of, an empty list matches all.

    Matching is per series: the series that match every criterion are the job's input (their instances are
    the exact instance set of its idempotency key)."""

    modalities: list[str] = Field(default_factory=list)  # (0008,0060), e.g. ["CR", "DX"]
    body_parts: list[str] = Field(default_factory=list)  # (0018,0015), e.g. ["CHEST"]
    sop_classes: list[str] = Field(default_factory=list)  # (0008,0016) UIDs
    #: Regular expression searched (case-insensitive) in (0008,103E) Series Description.
    series_description: str | None = None
    calling_aes: list[str] = Field(default_factory=list)  # the AE title that sent the instances

    @field_validator("series_description")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            import re

            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"series_description is not a valid regular expression: {exc}") from None
        return v


class LabMatch(_Section):
    """A lab set: every code must have a result for the patient within the window."""

    #: LOINC codes (``1975-2``) or ``system|code`` tokens.
    codes: list[str] = Field(min_length=1)
    within_hours: float = Field(72.0, gt=0)


class RoutingRule(_Section):
    """Which app a study or a patient's labs go to (issue: routing rules as data).

    A rule with ``study`` fires when a study becomes ready and a series matches (and, with ``labs`` too, only
    when the patient has that lab set). A rule with only ``labs`` fires when a patient's results complete the
    lab set."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    app: str = Field(min_length=1)
    priority: Priority = "routine"
    enabled: bool = True
    study: StudyMatch | None = None
    labs: LabMatch | None = None

    @model_validator(mode="after")
    def _has_trigger(self) -> RoutingRule:
        if self.study is None and self.labs is None:
            raise ValueError(f"rule {self.name!r} needs a 'study' match, a 'labs' set, or both")
        return self


def demo_rules() -> list[RoutingRule]:
    """The rules a fresh install starts with: the three demonstration apps on the data each was made for.
    A site replaces them with its own list (``[[routing.rules]]``; ``rules = []`` for none)."""
    return [
        RoutingRule(name="chest-radiograph-triage", app="cxr_triage", priority="routine",
                    study=StudyMatch(modalities=["CR", "DX"], body_parts=["CHEST"])),
        RoutingRule(name="brain-mr-structures", app="mr_segmentation", priority="routine",
                    study=StudyMatch(modalities=["MR"], body_parts=["HEAD", "BRAIN"])),
        # The liver panel the PBC severity model needs (bilirubin, albumin, ALP, AST, platelets, PT).
        RoutingRule(name="liver-panel-severity", app="lab_severity", priority="routine",
                    labs=LabMatch(codes=["1975-2", "1751-7", "6768-6", "1920-8", "777-3", "5902-2"],
                                  within_hours=168)),
    ]


class RoutingSettings(_Section):
    #: Rules from the configuration file; the API can add and edit rules too (kept in the database).
    #: Default: :func:`demo_rules`.
    rules: list[RoutingRule] = Field(default_factory=demo_rules)


class JobSettings(_Section):
    """Jobs and the executor that runs them (interop.jobs)."""

    executor: Literal["local", "celery"] = "local"
    #: Apps the local executor runs at once (one per GPU, or a CPU pool).
    local_workers: int = Field(1, ge=1)
    #: GPU ids for the local executor: one slot per GPU, each app run pinned by CUDA_VISIBLE_DEVICES.
    gpus: list[str] = Field(default_factory=list)
    #: Keep a child process with torch/MONAI/Holoscan already imported, waiting for the next job.
    prewarm: bool = True
    #: Attempts before a job ends ``failed`` (the app reported an error) or ``dead`` (it never came back).
    max_attempts: int = Field(3, ge=1)
    #: Delay before the second attempt; doubles with each further attempt.
    backoff_seconds: float = Field(10.0, ge=0)
    #: A running job's lease: its worker renews it; one not renewed for this long is re-queued.
    lease_seconds: float = Field(30.0, gt=0)
    #: Default timeout of an app run (app.yaml may set its own).
    timeout_seconds: float = Field(600.0, gt=0)
    #: Extra directories holding app folders (``<dir>/<app>/app.yaml``) besides the bundled ``apps/``; each
    #: directory is put on the app process's import path.
    apps_dirs: list[Path] = Field(default_factory=list)
    #: A site's own model bundle per app, replacing the app's demonstration model (``{"cxr_triage": "/models/cxr"}``).
    models: dict[str, Path] = Field(default_factory=dict)
    #: Celery broker for ``executor = "celery"`` (``redis://host:6379/0`` or ``amqp://...``).
    broker_url: str | None = None

    @model_validator(mode="after")
    def _broker_for_celery(self) -> JobSettings:
        if self.executor == "celery" and not self.broker_url:
            raise ValueError("jobs.executor = 'celery' needs jobs.broker_url")
        return self


class WritebackSettings(_Section):
    """Where results go besides this node's own store and FHIR facade (interop.writeback)."""

    #: ``[[writeback.destinations]]``: ``kind`` = ``dicom`` (C-STORE SCU), ``dicomweb`` (STOW-RS), ``fhir``
    #: (transaction Bundles; bearer token or SMART backend services) or ``webhook`` (critical findings).
    destinations: list[DestinationConfig] = Field(default_factory=list)
    #: Retries of the node's own store/FHIR facade (these fail only when the node itself is in trouble).
    local_max_attempts: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _unique_names(self) -> WritebackSettings:
        names = [d.name for d in self.destinations]
        dup = sorted({n for n in names if names.count(n) > 1} | ({"local"} & set(names)))
        if dup:
            raise ValueError(f"writeback.destinations: name(s) used twice or reserved: {', '.join(dup)}")
        return self


class ReportSettings(_Section):
    """Reports, recommendations, critical findings and sign-off (interop.reports)."""

    #: Finding name -> probability at or above which a present finding is critical (stat Task, a FHIR
    #: Communication and the webhooks); overrides the apps' own ``critical`` in app.yaml.
    critical: dict[str, float] = Field(default_factory=dict)
    #: Retrieve follow-up recommendations from the guidance knowledge base (interop.recommend).
    recommendations: bool = True
    #: An OpenAI-compatible endpoint (``http://host:8000/v1``) that phrases the report text from the findings
    #: and the retrieved guidance; without one the text is built from them directly.
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    #: The Verifying Organization of signed SRs.
    organization: str = "interop"
    #: Identifier system of a Patient first known from DICOM (Patient ID with no issuer).
    patient_identifier_system: str = "urn:dicom:patient-id"


class AuditSettings(_Section):
    """The audit trail (interop.audit): an AuditEvent for every HTTP access to patient data."""

    enabled: bool = True
    #: Events are written in batches this often (a killed process loses at most this much of the trail).
    flush_seconds: float = Field(0.2, gt=0, le=10)


class OhifSettings(_Section):
    """The OHIF viewer at ``/ohif/`` (interop.ohif); ``python -m interop.ohif.fetch`` installs its files."""

    #: The prebuilt viewer (npm ``@ohif/app``'s ``dist/``). Default: ``<data_dir>/ohif/dist`` when it exists.
    dist_dir: Path | None = None
    #: OpenID Connect client of the viewer (a public client with PKCE; redirect URI ``<base>/ohif/callback``).
    client_id: str = "interop-ohif"
    #: Its sign-in authority. Default: this node's built-in authorization server.
    authority: str | None = None
    #: Scopes it asks for: reading and searching imaging is all the viewer does; ``online_access`` gives a refresh
    #: token bound to the login session, which OHIF uses to renew its access token.
    scope: str = "openid profile online_access user/ImagingStudy.rs"


class S3Settings(_Section):
    """An S3-compatible object store for instance files and result arrays (interop.store.s3).

    Credentials: ``access_key_id`` and ``secret_access_key`` when set, else the standard AWS chain (``AWS_*``
    environment variables, ``~/.aws/credentials``, an instance or container role)."""

    #: e.g. ``http://minio:9000``; default: AWS S3 itself (the region's endpoint).
    endpoint_url: str | None = None
    bucket: str = Field(min_length=3, max_length=63)
    #: Keys are ``<prefix>objects/<key>``: several nodes or sites can share a bucket under different prefixes.
    prefix: str = ""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    #: ``path`` for most self-hosted stores (MinIO, Ceph); ``virtual`` for AWS; ``auto`` lets botocore choose.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    #: Local read cache of whole objects (default ``<data_dir>/blobs/cache``; same volume as the spool directory
    #: ``<data_dir>/blobs/tmp``, so a stored file moves into the cache by rename).
    cache_dir: Path | None = None
    #: Bound of the cache; least recently used objects leave first. 0: no cache (reads are ranged GETs only).
    cache_bytes: int = Field(1 << 30, ge=0)
    #: Objects at least this large are uploaded in parts (S3's smallest part is 5 MiB).
    multipart_threshold_bytes: int = Field(16 << 20, ge=5 << 20)
    #: Attempts per request (botocore's standard retry mode: 5xx, throttling and connection errors, with
    #: jittered exponential backoff). A C-STORE waits for them all before it answers A700, so keep the sum of
    #: backoffs below the senders' DIMSE timeout (Orthanc's default: 10 s).
    max_attempts: int = Field(3, ge=1, le=10)
    connect_timeout_seconds: float = Field(3.0, gt=0)
    read_timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        return f"{v}/" if v else ""

    @model_validator(mode="after")
    def _key_pair(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("storage.s3: set both access_key_id and secret_access_key, or neither (AWS chain)")
        return self


class StorageSettings(_Section):
    """Where instance files and result arrays live: files under ``<data_dir>/blobs`` or an S3 bucket."""

    backend: Literal["file", "s3"] = "file"
    s3: S3Settings | None = None
    #: Free-space watermark of the volume received files land on (the data directory's blobs; for S3 the local
    #: spool): below ``min_free_bytes`` or ``min_free_percent`` of the volume, whichever is larger, new data is
    #: refused before it is written (C-STORE A700, STOW-RS 503 with Retry-After, HL7 AE; interop.store.space).
    #: 0 and 0 turn the check off.
    min_free_bytes: int = Field(1 << 30, ge=0)
    min_free_percent: float = Field(5.0, ge=0, lt=100)

    @model_validator(mode="after")
    def _s3_named(self) -> StorageSettings:
        if self.backend == "s3" and self.s3 is None:
            raise ValueError("storage.backend = 's3' needs a [storage.s3] section with at least the bucket")
        return self


class RetentionSettings(_Section):
    """Deleting received images once their results are home (interop.retention): a study's instances go
    ``days`` after the last write-back of its results was delivered, and never before. A study is kept while
    it is receiving, while any job on it is unfinished, while any write-back of its reports is not ``sent``
    (pending, retrying, dead), and, with ``require_signoff``, while any of its reports awaits a physician. The
    reports, the FHIR resources (DiagnosticReport, Observations, ImagingStudy) and this node's own results in
    the study (SR, SEG, heat-map) stay; the received pixel data goes. ``interop retention run --dry-run``
    lists what a pass would delete."""

    enabled: bool = False
    #: Days after the last delivery (and the last sign-off, job and received instance) before deletion.
    days: float = Field(30.0, gt=0)
    #: Keep studies whose reports are not yet signed (``preliminary``): a physician may still open the images.
    require_signoff: bool = True
    #: Studies that never produced a result (no routing rule matched, or every job failed or was cancelled):
    #: deleted this many days after their last instance arrived; None keeps them until an operator acts.
    without_results_days: float | None = Field(None, gt=0)
    #: Keep this node's own objects in the study (the SR, SEG and heat-map its outbox stored locally); off
    #: deletes them with the received images (the FHIR results and the reports stay either way).
    keep_results: bool = True
    #: How often the server runs a pass.
    interval_seconds: float = Field(3600.0, gt=0)
    #: Studies deleted per pass at most (each in its own transaction).
    batch: int = Field(100, ge=1)


class ShutdownSettings(_Section):
    """What ``interop serve`` does on SIGTERM / SIGINT: stop accepting (DICOM, MLLP, HTTP), let what is in
    flight finish for at most ``grace_seconds``, hand running jobs back to the queue, flush the audit trail,
    exit 0."""

    grace_seconds: float = Field(30.0, ge=0)


class ModelEntry(_Section):
    """``[[models.installed]]``: one more version of an app's model, a bundle directory (its version is the one
    in its ``configs/metadata.json``)."""

    app: str = Field(min_length=1)
    path: Path


class ModelSettings(_Section):
    """Model versions, shadow runs and drift (interop.mlops). Versions are found in the apps' own bundles
    (``jobs.models`` replaces those), in ``installed`` and under ``<data_dir>/models/<app>/<version>/``;
    which one is active or shadow is kept in the database (``interop models``, ``/api/models``)."""

    installed: list[ModelEntry] = Field(default_factory=list)
    #: Shadow agreement of findings: the same findings present and every probability within this distance.
    shadow_max_probability_delta: float = Field(0.1, ge=0, le=1)
    #: Shadow agreement of segmentations: every label's Dice at least this.
    shadow_min_dice: float = Field(0.8, ge=0, le=1)
    #: Drift is computed over each model version's most recent results, at most this many.
    drift_window: int = Field(500, ge=10)
    #: Fewer results than this and no drift figure is published (too few to say anything).
    drift_min_cases: int = Field(20, ge=1)


class LoggingSettings(_Section):
    """Log lines (interop.logs): ``text`` for a terminal, ``json`` (one object a line, with the study's
    ``correlation_id``) for a service whose output goes to a log collector."""

    format: Literal["text", "json"] = "text"
    #: The level; unset, the top-level ``log_level`` (``INTEROP_LOG_LEVEL``) is used.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INTEROP_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Path(".interop")
    #: SQLAlchemy URL; default ``sqlite:///<data_dir>/interop.db``. PostgreSQL: ``postgresql+psycopg://...``.
    database_url: str | None = None
    dicom: DicomSettings = DicomSettings()
    http: HttpSettings = HttpSettings()
    studies: StudySettings = StudySettings()
    auth: AuthSettings = AuthSettings()
    hl7: Hl7Settings = Hl7Settings()
    routing: RoutingSettings = RoutingSettings()
    jobs: JobSettings = JobSettings()
    writeback: WritebackSettings = WritebackSettings()
    reports: ReportSettings = ReportSettings()
    audit: AuditSettings = AuditSettings()
    ohif: OhifSettings = OhifSettings()
    storage: StorageSettings = StorageSettings()
    models: ModelSettings = ModelSettings()
    retention: RetentionSettings = RetentionSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    log_level: str = "INFO"
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("INTEROP_CONFIG")
        if toml_path:
            if not Path(toml_path).is_file():
                raise ValueError(f"INTEROP_CONFIG names {toml_path!r}, which is not a readable file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        _check_env_names(type(self))
        self.data_dir = self.data_dir.expanduser().absolute()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'interop.db'}"
        if self.auth.secret is not None and len(self.auth.secret) < 32:
            raise ValueError("auth.secret must be at least 32 characters (HS256 key)")
        return self

    @property
    def log_level_name(self) -> str:
        """The effective log level: ``logging.level``, else ``log_level``."""
        return (self.logging.level or self.log_level).upper()

    @property
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url


def _check_env_names(cls: type[Settings]) -> None:
    """Refuse ``INTEROP_*`` variables that name no setting (pydantic-settings would ignore them)."""
    import typing

    known = {"INTEROP_CONFIG"}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = f"{prefix}{name.upper()}"
            known.add(key)
            for sub in (info.annotation, *typing.get_args(info.annotation)):  # X and X | None
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub, f"{key}__")

    walk(cls, "INTEROP_")
    unknown = sorted(k for k in os.environ if k.upper().startswith("INTEROP_") and k.upper() not in known)
    if unknown:
        raise ValueError(f"unknown setting(s) in the environment: {', '.join(unknown)}")


#: Keys whose values are never echoed in an error message.
_SECRET_WORDS = ("secret", "password", "token", "key", "credential")


def config_problems(exc: Exception) -> list[str]:
    """One line per problem of a configuration that did not validate, naming the key (``dicom.port``,
    ``writeback.destinations[0].url``) and, for a plain value that is no secret, the value given."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [str(exc)]
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        key = ""
        for part in err.get("loc", ()):
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            msg = "unknown setting (a typo? see the README's configuration section)"
        elif kind == "missing":
            msg = "required, and not given"
        value = err.get("input")
        secret = any(w in key.lower() for w in _SECRET_WORDS)
        if kind not in ("extra_forbidden", "missing") and not secret and isinstance(value, str | int | float):
            msg += f" (given: {str(value)[:80]!r})" if isinstance(value, str) else f" (given: {value})"
        lines.append(f"{key}: {msg}" if key else msg)
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (a dependency that tests override)."""
    return Settings()
