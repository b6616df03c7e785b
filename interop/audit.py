"""The audit trail (DESIGN promise 4): a FHIR AuditEvent for every HTTP access to patient data (FHIR, DICOMweb,
the reports/jobs/studies API), allowed or refused, with who (the token's subject and name), which client, what
(the resource, study or report; a search's query), when, from where and the outcome. Searchable at
``/fhir/AuditEvent`` (date, type, subtype, action, outcome, entity, patient); never editable through the API
(AuditEvent is read-only there).

:func:`audit_event` is pure (request facts in, an R4 AuditEvent out, or None for what is not patient data).
:class:`AuditMiddleware` collects the facts around each request (an ASGI middleware: no body is read);
:class:`AuditTrail` writes the events in batches on its own thread, one transaction per batch, so an audited
read costs the request a queue append, not a database write. Events still queued when the process is killed
are lost (at most one flush interval, 0.2 s by default); a clean stop writes them all. A sign-off, the one
decision a person signs, is audited by the sign-off itself in the same transaction as the verdict
(:func:`signoff_event`).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from interop.fhir.store import FhirStore

log = logging.getLogger(__name__)

EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
USER_SYSTEM = "urn:interop:user"
CLIENT_SYSTEM = "urn:interop:client"
LOCAL = "urn:interop:audit"
DICOM_UID = "urn:dicom:uid"

#: API paths (under /api) that hold no patient data: configuration, apps, destinations.
NOT_PATIENT_DATA = ("/api/apps", "/api/routing", "/api/destinations", "/api/writebacks")
PUBLIC = ("/fhir/metadata", "/fhir/.well-known")


def _fhir_interaction(method: str, parts: list[str]) -> str:
    from interop.metrics import fhir_interaction

    return fhir_interaction(method, "/" + "/".join(parts))


ACTION = {"create": "C", "read": "R", "vread": "R", "history-instance": "R", "update": "U",
          "conditional-update": "U", "patch": "U", "delete": "D"}


def _outcome(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused, not found), 8 serious failure (server error)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def _agents(principal: Any, client_addr: str | None) -> list[dict[str, Any]]:
    network = {"network": {"address": client_addr, "type": "2"}} if client_addr else {}
    if principal is None:
        return [{"who": {"display": "unauthenticated caller"}, "requestor": True, **network}]
    claims = getattr(principal, "claims", {}) or {}
    who: dict[str, Any] = {"identifier": {"system": USER_SYSTEM, "value": principal.subject}}
    name = claims.get("name")
    who["display"] = str(name) if name else principal.subject
    agent: dict[str, Any] = {"who": who, "requestor": True, **network}
    if claims.get("role"):
        agent["role"] = [{"text": str(claims["role"])}]
    agents = [agent]
    if principal.client_id:
        agents.append({"who": {"identifier": {"system": CLIENT_SYSTEM, "value": principal.client_id},
                               "display": f"client {principal.client_id}"}, "requestor": False})
    return agents


def _query_entity(query: str, what: str) -> dict[str, Any]:
    return {"what": {"display": what}, "query": base64.b64encode(query.encode()).decode()}


def _patient_entities(query: str) -> list[dict[str, Any]]:
    from urllib.parse import parse_qsl

    out = []
    for k, v in parse_qsl(query):
        if k.split(":")[0] in ("patient", "subject") and v and "/" not in v.strip("/"):
            v = f"Patient/{v}"
        if k.split(":")[0] in ("patient", "subject") and v.startswith("Patient/"):
            out.append({"what": {"reference": v}, "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}})
    return out


def audit_event(*, method: str, path: str, query: str, status: int, principal: Any, client_addr: str | None,
                at: dt.datetime) -> dict[str, Any] | None:
    """The AuditEvent of one request, or None when the request touched no patient data (pure)."""
    if path.startswith(PUBLIC) or not path.startswith(("/fhir", "/dicomweb", "/api/")):
        return None
    if path.startswith(NOT_PATIENT_DATA):
        return None
    parts = [p for p in path.split("/") if p]
    entities: list[dict[str, Any]] = []
    if parts[0] == "fhir":
        interaction = _fhir_interaction(method, parts)
        type_ = {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
        subtype = [{"system": INTERACTION, "code": interaction}]
        action = ACTION.get(interaction, "E")
        tail = parts[1:]
        if len(tail) >= 2 and not tail[1].startswith("_") and not tail[1].startswith("$"):
            entities.append({"what": {"reference": f"{tail[0]}/{tail[1]}"}})
            if tail[0] == "Patient":
                entities[-1]["role"] = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
        elif tail:
            entities.append(_query_entity(query, f"{tail[0]} {interaction}"))
        else:
            entities.append({"what": {"display": f"{interaction} Bundle"}})
        entities += _patient_entities(query)
    elif parts[0] == "dicomweb":
        if method == "POST":
            type_ = {"system": DCM, "code": "110104", "display": "DICOM Instances Transferred"}
            action = "C"
        elif len(parts) >= 3 and parts[1] == "studies" and parts[-1] not in ("studies", "series", "instances"):
            type_ = {"system": DCM, "code": "110103", "display": "DICOM Instances Accessed"}
            action = "R"
        else:
            type_ = {"system": DCM, "code": "110112", "display": "Query"}
            action = "E"
        subtype = [{"system": LOCAL, "code": f"dicomweb-{method.lower()}"}]
        if len(parts) >= 3 and parts[1] == "studies":
            entities.append({"what": {"identifier": {"system": DICOM_UID, "value": f"urn:oid:{parts[2]}"}},
                             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                      "code": "2", "display": "System Object"}})
        if query:
            entities.append(_query_entity(query, "DICOMweb query"))
    else:
        type_ = {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
        subtype = [{"system": LOCAL, "code": f"api-{method.lower()}"}]
        action = {"GET": "R", "POST": "E", "PUT": "U", "DELETE": "D"}.get(method, "E")
        entities.append({"what": {"display": path}})
        if query:
            entities.append(_query_entity(query, "API query"))
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": type_,
        "subtype": subtype,
        "action": action,
        "recorded": at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": _outcome(status),
        "outcomeDesc": f"HTTP {status} {method} {path}",
        "agent": _agents(principal, client_addr),
        "source": {"observer": {"display": "interop imaging-AI node"},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        "entity": entities,
    }
    return event


def signoff_event(*, report_id: int, action: str, status_after: str, reader_id: str, reader_name: str,
                  client_id: str | None, report_identifier: dict[str, str] | None, reason: str | None,
                  at: dt.datetime) -> dict[str, Any]:
    """The AuditEvent of a physician's verdict (written with the verdict, pure)."""
    principal = type("P", (), {"subject": reader_id, "client_id": client_id, "claims": {"name": reader_name}})()
    what: dict[str, Any] = ({"identifier": report_identifier} if report_identifier
                            else {"display": f"report {report_id}"})
    detail = [{"type": "verdict", "valueString": action}, {"type": "status", "valueString": status_after}]
    if reason:
        detail.append({"type": "reason", "valueString": reason})
    return {
        "resourceType": "AuditEvent",
        "type": {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": LOCAL, "code": "signoff", "display": "AI report sign-off"}],
        "action": "U",
        "recorded": at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": "0",
        "outcomeDesc": f"report {report_id}: {action} -> {status_after}",
        "agent": _agents(principal, None),
        "source": {"observer": {"display": "interop imaging-AI node"},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        "entity": [{"what": what, "detail": detail}],
    }


def authentication_event(*, action: str, username: str, succeeded: bool, client_id: str | None,
                         client_addr: str | None, at: dt.datetime, display_name: str | None = None,
                         reason: str | None = None) -> dict[str, Any]:
    """The AuditEvent of a sign-in to (``login``) or sign-out from (``logout``) the built-in authorization
    server, pure: DICOM "User Authentication" (DCM 110114) with subtype Login (110122) or Logout (110123), as
    PS3.15 §A.5.3.21 has it; a refused sign-in is outcome 4 (minor failure) with the reason. ``username`` is
    what was typed (a refused one may name no user)."""
    if action not in ("login", "logout"):
        raise ValueError(f"action must be login or logout, not {action!r}")
    code, display = ("110122", "Login") if action == "login" else ("110123", "Logout")
    principal = type("P", (), {"subject": username, "client_id": client_id,
                               "claims": {"name": display_name} if display_name else {}})()
    outcome = f"{display} {'succeeded' if succeeded else 'refused'}" + (f": {reason}" if reason else "")
    return {
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": DCM, "code": code, "display": display}],
        "action": "E",
        "recorded": at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": "0" if succeeded else "4",
        "outcomeDesc": outcome,
        "agent": _agents(principal, client_addr),
        "source": {"observer": {"display": "interop imaging-AI node"},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
    }


class AuditTrail:
    """Writes AuditEvents in batches on its own thread (one transaction per batch)."""

    def __init__(self, fhir: FhirStore, *, flush_seconds: float = 0.2, max_batch: int = 500) -> None:
        self.fhir = fhir
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0

    def record(self, event: dict[str, Any]) -> None:
        self._queue.put(event)

    def flush(self) -> int:
        batch: list[dict[str, Any]] = []
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return 0
        try:
            self.fhir.create_many(batch)  # one transaction, one insert per table
        except Exception as exc:  # the audit trail must never take a request down; say so loudly
            log.error("audit: %d event(s) could not be written: %s", len(batch), exc)
            from interop.metrics import AUDIT_FAILURES

            AUDIT_FAILURES.inc(len(batch))
            return 0
        self.written += len(batch)
        return len(batch)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            while self.flush() == self.max_batch:
                pass
            self._stop.wait(max(0.0, self.flush_seconds - (time.monotonic() - started)))
        while self.flush():
            pass

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


class AuditMiddleware:
    """Records an AuditEvent for each request to a patient-data path, after the response status is known."""

    def __init__(self, app: ASGIApp, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        scope.setdefault("state", {})

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = scope.get("state") or {}
            try:
                client = scope.get("client")
                event = audit_event(method=scope["method"], path=scope["path"],
                                    query=scope.get("query_string", b"").decode("latin-1"), status=status,
                                    principal=state.get("principal"), client_addr=client[0] if client else None,
                                    at=dt.datetime.now(dt.UTC))
                if event is not None:
                    self.trail.record(event)
            except Exception as exc:  # never fail a request because of its audit record
                log.error("audit: event for %s %s not made: %s", scope.get("method"), scope.get("path"), exc)
