"""TLS for the node's own listeners (MLLP now; the DIMSE listener takes the same settings): one server-side
``ssl.SSLContext`` built from a certificate, its key and, to demand client certificates, a CA bundle.

Protocol floor TLS 1.2 (BCP 195 / RFC 9325; IHE ATNA's secure node profile). With ``ca_file`` set and
``require_client_cert`` true, a peer must present a certificate that CA issued (mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path
    #: CA certificates that client certificates are checked against.
    ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files_exist(self) -> TlsSettings:
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"tls.{name} {path} is not a readable file")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("tls.require_client_cert needs tls.ca_file (the CA client certificates come from)")
        return self


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx
