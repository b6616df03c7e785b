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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

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
    #: HMAC secret for tokens this node mints. Default: a random secret kept in ``<data_dir>/secret.key``.
    secret: str | None = None
    issuer: str = "interop"
    audience: str = "interop"
    token_ttl_seconds: int = Field(3600, gt=0)


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
    log_level: str = "INFO"

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
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url


def _check_env_names(cls: type[Settings]) -> None:
    """Refuse ``INTEROP_*`` variables that name no setting (pydantic-settings would ignore them)."""
    known = {"INTEROP_CONFIG"}
    for name, info in cls.model_fields.items():
        known.add(f"INTEROP_{name.upper()}")
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            known.update(f"INTEROP_{name.upper()}__{f.upper()}" for f in sub.model_fields)
    unknown = sorted(k for k in os.environ if k.upper().startswith("INTEROP_") and k.upper() not in known)
    if unknown:
        raise ValueError(f"unknown setting(s) in the environment: {', '.join(unknown)}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (a dependency that tests override)."""
    return Settings()
