"""Logging: a JSON or text format, and one correlation id per study on every line about it.

**The correlation id.** Every line written while a study (or an HL7 message, or an HTTP request) is being
handled carries ``correlation_id``: from the C-STORE association or the STOW-RS request through study
readiness, routing, the job (the server's executor threads, a Celery worker, the app's own child process), the
report, each write-back delivery (SR, SEG, FHIR, webhook) and the sign-off. It is held in a
:class:`contextvars.ContextVar` (:func:`correlated`), so a thread or an asyncio task sets it once and every
``log.info`` under it carries it; the formatters read it when they format a record.

Which id, and why not the Study Instance UID: a UID identifies patient data (PS3.15 Annex E replaces it when
de-identifying), and logs travel to places with weaker access rules than the PACS. The id of a study is
derived from its UID by a one-way hash (:func:`study_id`): ``s-`` and 16 hex digits of SHA-256 over a
domain prefix and the UID. It needs no column and no lookup, so every process that knows the study (listener,
STOW, assembler, router, worker, reporter, outbox) names it the same, also across restarts and on a second
delivery; an operator who has the UID finds its lines with ``interop log-id <uid>``, and someone with the logs
alone cannot turn the id back into a UID. An HL7 message's id (:func:`hl7_id`) hashes its identity in the
message log (MSH-3, MSH-4, MSH-10), so a duplicate sent again gets the same id; a job carries its id in its
inputs (``inputs.correlation_id``: the Celery message holds only the job id, so every worker reads it from the
job row), and a job with neither (a person's request, labs from the FHIR API) gets one from its idempotency key
(:func:`job_id`). An HTTP request takes a well-formed ``X-Correlation-ID`` / ``X-Request-ID`` from its caller
(:func:`accept`) or gets a fresh ``r-`` id.

No patient data in logs: lines name studies, messages and jobs by these ids and row numbers, never by Patient
ID, name or UID.

**The format** (``[logging] format``): ``text`` for a person at a terminal, ``json`` (one object per line:
``time``, ``level``, ``logger``, ``message``, ``correlation_id`` and any ``extra=`` fields, ``exception``) for a
service whose lines go to a collector; the compose file sets ``json``. A formatter of our own (~40 lines)
rather than python-json-logger: we need exactly these fields plus the context variable, and the standard
library's ``Formatter`` gives the rest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import IO, Any

CORRELATION: ContextVar[str | None] = ContextVar("interop_correlation_id", default=None)

#: The id of a process that serves one job only (the app's child process); threads the app starts
#: (Holoscan's) don't inherit the context variable.
_process_id: str | None = None

#: What we take from a caller's header: short, and nothing that could break a log line or a header.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
_STORED_ID = re.compile(r'"correlation_id": "([A-Za-z0-9._:/+=-]{1,128})"')


def _digest(domain: str, *parts: str) -> str:
    return hashlib.sha256("\x00".join((domain, *parts)).encode()).hexdigest()[:16]


def study_id(study_uid: str) -> str:
    """The correlation id of a study: a one-way hash of its Study Instance UID."""
    return f"s-{_digest('interop:study', study_uid.strip())}"


def hl7_id(sending_application: str, sending_facility: str, control_id: str) -> str:
    """The correlation id of an HL7 v2 message: a hash of its identity in the message log (MSH-3/4/10)."""
    return f"m-{_digest('interop:hl7', sending_application, sending_facility, control_id)}"


def job_id(idempotency_key: str) -> str:
    """The correlation id of a job that no study or message started (a request; labs from the FHIR API)."""
    return f"j-{_digest('interop:job', idempotency_key)}"


def new_request_id() -> str:
    return f"r-{secrets.token_hex(8)}"


def accept(value: str | None) -> str | None:
    """A caller's ``X-Correlation-ID`` / ``X-Request-ID`` when it is a plain token of up to 128 characters."""
    value = (value or "").strip()
    return value if _ACCEPTABLE.fullmatch(value) else None


def current() -> str | None:
    return CORRELATION.get() or _process_id


@contextlib.contextmanager
def correlated(cid: str | None) -> Iterator[str | None]:
    """Lines logged inside carry ``cid`` (None: the enclosing id, if any, stays)."""
    if cid is None:
        yield CORRELATION.get()
        return
    token = CORRELATION.set(cid)
    try:
        yield cid
    finally:
        CORRELATION.reset(token)


def set_process_id(cid: str | None) -> None:
    """The id of every line of this process that has none of its own (a child that runs one job)."""
    global _process_id
    _process_id = cid


def of_inputs(inputs: dict[str, Any] | str | None) -> str | None:
    """The correlation id a job carries in its inputs (a dict or the stored JSON)."""
    if isinstance(inputs, str):
        # Stored with sorted keys, so the id is near the start: read there before parsing a long SOP list.
        m = _STORED_ID.search(inputs, 0, 256)
        if m:
            return m.group(1)
        try:
            inputs = json.loads(inputs)
        except ValueError:
            return None
    value = inputs.get("correlation_id") if isinstance(inputs, dict) else None
    return str(value) if value else None


# -- formatters -----------------------------------------------------------------------------------------------

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
#: uvicorn's ``color_message`` (its message again, with ANSI colours) is left out too.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}


def record_id(record: logging.LogRecord, fixed: str | None = None) -> str | None:
    return getattr(record, "correlation_id", None) or fixed or current()


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "correlation_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. ``correlation_id`` fixes the id (the app's ``logging.json``)."""

    def __init__(self, *args: Any, correlation_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.correlation_id = correlation_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = record_id(record, self.correlation_id)
        if cid:
            out["correlation_id"] = cid
        for key, value in extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [correlation id]: message key=value ...`` for a person at a terminal."""

    def __init__(self, *args: Any, correlation_id: str | None = None, **kwargs: Any) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(cid)s: %(message)s%(fields)s")
        self.correlation_id = correlation_id

    def format(self, record: logging.LogRecord) -> str:
        cid = record_id(record, self.correlation_id)
        record.cid = f" [{cid}]" if cid else ""
        fields = extras(record)
        fields.pop("cid", None)
        fields.pop("fields", None)
        record.fields = "".join(f" {k}={v}" for k, v in fields.items())
        try:
            return super().format(record)
        finally:
            vars(record).pop("cid", None)
            vars(record).pop("fields", None)


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}

#: Libraries whose INFO lines are per-PDU chatter (pynetdicom) or name UIDs of the data they copy (highdicom
#: logs ``copy attributes of module "Patient" from dataset "<SOP Instance UID>"`` for every object it builds).
QUIET = ("pynetdicom", "highdicom")

_handler: logging.Handler | None = None
_format = "text"


def configure(fmt: str = "text", level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) in ``fmt``; replaces an earlier call's handler."""
    global _handler, _format
    _format = fmt
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream or sys.stderr)
    _handler.setFormatter(FORMATTERS[fmt]())
    root.addHandler(_handler)
    root.setLevel(level.upper())
    for chatty in QUIET:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    return _handler


def child_settings() -> dict[str, Any]:
    """What a child process that runs one job needs to log like this one (interop.jobs.appproc)."""
    return {"format": _format, "level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            "correlation_id": current()}


def configure_child(settings: dict[str, Any] | None, cwd: str | None = None) -> None:
    """In the app's child process: this job's id on every line, our format on stderr, and a ``logging.json``
    in the working directory for MONAI Deploy's own logging set-up (:func:`app_logging_config`)."""
    settings = settings or {}
    fmt = str(settings.get("format") or "text")
    fmt = fmt if fmt in FORMATTERS else "text"
    level = str(settings.get("level") or "INFO")
    cid = settings.get("correlation_id")
    set_process_id(str(cid) if cid else None)
    configure(fmt, level)
    if cwd is not None:
        with contextlib.suppress(OSError), open(f"{cwd}/logging.json", "x", encoding="utf-8") as f:
            json.dump(app_logging_config(fmt, level, str(cid) if cid else None), f)


def app_logging_config(fmt: str, level: str, cid: str | None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for an app run: MONAI Deploy's ``set_up_logging`` reads
    ``logging.json`` from the working directory, so the app's own lines take our format and the job's id."""
    formatter = {"()": f"{__name__}.{FORMATTERS[fmt].__name__}", "correlation_id": cid}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"interop": formatter},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "interop"}},
        "root": {"level": level.upper(), "handlers": ["console"]},
    }
