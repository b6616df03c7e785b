"""The reports API: AI reports awaiting a physician (a worklist's data), the sign-off endpoint, the
feedback export for retraining, and the write-back outbox with its dead letters.

Sign-off needs a person whose role may sign (radiologist or physician: ``interop.auth.roles``) and write access
to DiagnosticReport (``user/DiagnosticReport.u``); the reader is the token's subject, and its ``name`` claim is
the name the verified SR and the report carry.
The sign-off Task of each report is also a FHIR Task (``GET /fhir/Task?focus=DiagnosticReport/<id>``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from interop.api.deps import CanAdminister, CanSign, NodeDep, require
from interop.auth import Principal

router = APIRouter(prefix="/api", tags=["reports"])


def patient_ids(node: Any, principal: Principal) -> frozenset[str] | None:
    """For a token confined to one patient (``patient/`` scopes with launch context): that patient's identifier
    values, which is what reports are filed under (the DICOM Patient ID or the MRN). None: not confined."""
    from interop.auth.compartment import patient_identifier_values

    return patient_identifier_values(node.fhir, principal, "DiagnosticReport", "r")


def check_report_patient(node: Any, principal: Principal, report_patient: str | None) -> None:
    from interop.errors import Forbidden

    allowed = patient_ids(node, principal)
    if allowed is not None and report_patient not in allowed:
        raise Forbidden("this report is not about the patient the token's patient/ scopes are for")

CanReadReports = Annotated[Principal, Depends(require("DiagnosticReport", "r"))]
CanSignReports = Annotated[Principal, Depends(require("DiagnosticReport", "u"))]
CanReadJobs = Annotated[Principal, Depends(require("Task", "r"))]


@router.get("/reports")
def list_reports(
    node: NodeDep,
    principal: CanReadReports,
    status: Annotated[str | None, Query(description="comma-separated: preliminary,final,amended,cancelled,"
                                                    "entered-in-error,building,failed")] = None,
    priority: Annotated[str | None, Query(pattern="^(stat|routine)$")] = None,
    app: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Reports, stat first, then oldest first. A ``patient/``-scoped token sees its patient's only."""
    allowed = patient_ids(node, principal)
    if allowed is not None:
        if patient_id is not None and patient_id not in allowed:
            return []
        return [r for pid in sorted(allowed if patient_id is None else {patient_id})
                for r in node.signoffs.reports(status=status, priority=priority, app=app, patient_id=pid,
                                               study_uid=study_uid, limit=limit, offset=offset)][:limit]
    return node.signoffs.reports(status=status, priority=priority, app=app, patient_id=patient_id,
                                 study_uid=study_uid, limit=limit, offset=offset)


@router.get("/reports/{report_id}")
def get_report(report_id: int, node: NodeDep, principal: CanReadReports) -> dict[str, Any]:
    """A report: the AI result, its text and recommendations (each citing its guidance), its verdicts, and
    the delivery of everything it owes its destinations."""
    out = node.signoffs.get(report_id)
    check_report_patient(node, principal, out["patient_id"])
    out["writebacks"] = node.outbox.rows(report_id=report_id)
    return out


class SignOffRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "amend", "reject"]
    #: Why (required to reject; kept with every verdict).
    reason: str | None = Field(None, max_length=4000)
    #: The physician's conclusion (amend; optional on accept).
    conclusion: str | None = Field(None, max_length=4000)
    #: The physician's present/absent per finding name, where they differ from the AI (amend).
    findings: dict[str, bool] = Field(default_factory=dict)


@router.post("/reports/{report_id}/signoff")
def sign_off(report_id: int, body: SignOffRequest, node: NodeDep, _: CanSignReports,
             principal: CanSign) -> dict[str, Any]:
    """Accept, amend or reject a report. Accept/amend: report ``final`` (``amended`` when it was final), a
    verified SR superseding the previous one, the recommendations ``active``, the Task ``completed``.
    Reject: report ``cancelled`` (``entered-in-error`` when it was final), recommendations ``revoked``.
    Needs a person whose role may sign (radiologist, physician) and DiagnosticReport write scope; a backend
    client's token can't sign."""
    check_report_patient(node, principal, node.signoffs.get(report_id)["patient_id"])
    name = str(principal.claims.get("name") or principal.subject)
    return node.signoffs.verdict(report_id, action=body.action, reader_id=principal.subject, reader_name=name,
                                 reason=body.reason, conclusion=body.conclusion, findings=body.findings,
                                 client_id=principal.client_id)


@router.get("/feedback")
def feedback(
    node: NodeDep,
    principal: CanReadReports,
    app: str | None = None,
    format: Annotated[str, Query(pattern="^(csv|json)$")] = "csv",
) -> Response:
    """Every verdict beside the AI output it judged, one row per finding: the table an app's train script
    reads to learn from the physicians' corrections. Not for a token confined to one patient."""
    from interop.auth.compartment import compartment_filter

    if compartment_filter(principal, "DiagnosticReport", "r") is not None:
        from interop.errors import Forbidden

        raise Forbidden("the feedback table spans patients; a patient/-scoped token can't read it")
    if format == "json":
        import json

        return Response(json.dumps(node.signoffs.feedback_rows(app), default=str), media_type="application/json")
    return Response(node.signoffs.feedback_csv(app), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="feedback.csv"'})


@router.get("/writebacks")
def list_writebacks(
    node: NodeDep,
    _: CanReadJobs,
    job_id: int | None = None,
    report_id: int | None = None,
    destination: str | None = None,
    state: Annotated[str | None, Query(pattern="^((pending|sending|retrying|sent|dead),?)+$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The write-back outbox: each object owed to a destination, its state, attempts and last error;
    ``state=dead`` is the dead-letter list."""
    return node.outbox.rows(job_id=job_id, report_id=report_id, destination=destination, state=state, limit=limit)


@router.post("/writebacks/{row_id}/retry")
def retry_writeback(row_id: int, node: NodeDep, _: CanAdminister) -> dict[str, Any]:
    """Send a dead letter again (after its cause was mended)."""
    return node.outbox.retry(row_id)


@router.get("/destinations")
def list_destinations(node: NodeDep, _: CanReadJobs) -> list[dict[str, Any]]:
    """The write-back destinations and the state of each one's circuit breaker."""
    return node.outbox.destinations()
