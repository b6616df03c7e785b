"""``interop doctor``: check a site's configuration and its peers before (or while) the node runs.

Each check says OK, FAIL or SKIP with what it saw: the configuration (it loaded: ``interop`` refuses a bad one
before this runs), the database (reachable; schema at the newest migration, or how far behind), the storage
(writable; free space against the watermark), the job broker (Celery executor), the node's own DIMSE listener
(a C-ECHO, when it is running), and every write-back destination as the outbox will use it: a C-ECHO to each
PACS with our calling AE title and TLS, a QIDO-RS search at each DICOMweb service, the CapabilityStatement of
each FHIR server (R4, transaction; with SMART backend services a token is fetched, which checks the key and
the registration). Webhooks are not called: a webhook only ever gets a real notification.

:func:`run_checks` returns the results; the CLI prints them and exits 1 when any failed.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from interop.config import Settings
from interop.tls import TlsSettings


@dataclass(frozen=True)
class Check:
    name: str
    #: True: passed; False: failed; None: skipped (not applicable here).
    ok: bool | None
    detail: str

    @property
    def label(self) -> str:
        return {True: "OK", False: "FAIL", None: "SKIP"}[self.ok]


def _run(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except Exception as exc:  # every failure is a finding to report, not a crash of the doctor
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return Check(name, False, reason)


def _database(settings: Settings) -> str:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from interop.store.db import MIGRATIONS, Database

    db = Database(settings.db_url)
    try:
        db.ping()
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with db.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        db.dispose()
    where = db.engine.url.render_as_string(hide_password=True)
    if current != head:
        raise RuntimeError(f"{where}: schema at {current or 'nothing'}, newest is {head} "
                           "(`interop migrate`, or `interop serve` migrates at start)")
    return f"{where}: schema at {head}"


def _storage(settings: Settings) -> str:
    from interop.store.blobs import open_blob_store
    from interop.store.space import measure, shortage

    blobs = open_blob_store(settings)
    blobs.ping()
    temp = blobs.temp_dir()
    probe = temp / f"doctor-{uuid.uuid4().hex}"
    probe.write_bytes(b"interop doctor")
    probe.unlink()
    space = measure(temp)
    low = shortage(space, settings.storage.min_free_bytes, settings.storage.min_free_percent)
    if low:
        raise RuntimeError(f"{temp}: {low}")
    return f"{settings.storage.backend} store writable; {space.free / 2**30:.1f} GiB free of " \
           f"{space.total / 2**30:.1f} GiB at {temp}"


def _broker(settings: Settings, timeout: float) -> str:
    from kombu import Connection

    url = settings.jobs.broker_url or ""
    with Connection(url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
    safe = url.split("@")[-1] if "@" in url else url
    return f"Celery broker {safe} answers"


def _self_client_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS to the node's own listener: is it there and speaking (not: is it who it claims; that is the
    site's PKI). It presents the node's own certificate, in case client certificates are required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


def _own_listener(settings: Settings, timeout: float) -> str:
    from pynetdicom import AE

    d = settings.dicom
    ae = AE(ae_title="INTEROP-DOCTOR")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    host = "127.0.0.1" if d.host in ("0.0.0.0", "::", "") else d.host
    tls_args = (_self_client_context(d.tls), host) if d.tls is not None else None
    assoc = ae.associate(host, d.port, ae_title=d.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        raise RuntimeError(f"no association with {d.ae_title}@{host}:{d.port} (is `interop serve` running? "
                           "is INTEROP-DOCTOR allowed by dicom.allowed_aes?)")
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
    if status != 0:
        raise RuntimeError(f"C-ECHO to {d.ae_title}@{host}:{d.port}: status {status}")
    return f"C-ECHO to {d.ae_title}@{host}:{d.port}: success"


@contextlib.contextmanager
def _destination(config: object) -> Iterator[object]:
    from interop.writeback.destinations import destination_from_config

    dest = destination_from_config(config)
    try:
        yield dest
    finally:
        dest.close()


def _check_destination(config: object) -> str:
    with _destination(config) as dest:
        return str(dest.check())  # type: ignore[attr-defined]


def run_checks(settings: Settings, *, timeout: float = 5.0, own_listener: bool = True) -> list[Check]:
    """Every check, in order; none raises."""
    out = [Check("configuration", True, "loaded")]
    out.append(_run("database", lambda: _database(settings)))
    out.append(_run("storage", lambda: _storage(settings)))
    if settings.jobs.executor == "celery":
        out.append(_run("broker", lambda: _broker(settings, timeout)))
    else:
        out.append(Check("broker", None, "local executor: no broker"))
    if own_listener:
        out.append(_run(f"dicom listener {settings.dicom.ae_title}", lambda: _own_listener(settings, timeout)))
    for dest in settings.writeback.destinations:
        name = f"{dest.kind} destination {dest.name}"
        if not dest.enabled:
            out.append(Check(name, None, "disabled"))
        elif dest.kind == "webhook":
            out.append(Check(name, None, f"not called ({dest.url} only ever gets a real notification)"))
        else:
            out.append(_run(name, lambda d=dest: _check_destination(d)))  # type: ignore[misc]
    if not settings.writeback.destinations:
        out.append(Check("destinations", None, "none configured: results stay in this node"))
    return out


def report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.label:<4}  {c.name:<{width}}  {c.detail}" for c in checks)
