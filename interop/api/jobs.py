"""The node's API for AI work: installed apps, routing rules, and jobs with their results.

Jobs are the SMART ``Task`` compartment (an AI job is a FHIR Task in all but name: issue #5 exposes the
sign-off Tasks); editing routing rules needs a wildcard write scope (``system/*.cud``: an administrator's).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from interop import logs
from interop.api.deps import CanAdminister, NodeDep, require
from interop.auth import Principal
from interop.config import RoutingRule
from interop.errors import InvalidInput
from interop.routing.router import requested_decision

router = APIRouter(prefix="/api", tags=["jobs"])

CanReadJobs = Annotated[Principal, Depends(require("Task", "r"))]
CanWriteJobs = Annotated[Principal, Depends(require("Task", "c"))]


def with_correlation(response: Response, job: dict[str, Any]) -> dict[str, Any]:
    """Name the job's correlation id (interop.logs) in ``X-Correlation-ID``: the id its log lines carry."""
    cid = logs.of_inputs(job.get("inputs"))
    if cid:
        response.headers["X-Correlation-ID"] = cid
    return job


@router.get("/apps")
def list_apps(node: NodeDep, _: CanReadJobs) -> list[dict[str, Any]]:
    """The apps this node can run, with the model version each would use now."""
    return [spec.as_dict() for spec in node.apps.apps.values()]


@router.get("/routing/rules")
def list_rules(node: NodeDep, _: CanReadJobs) -> list[dict[str, Any]]:
    return [{**rule.model_dump(), "source": source} for rule, source in node.rules.all()]


@router.get("/routing/rules/{name}")
def get_rule(name: str, node: NodeDep, _: CanReadJobs) -> dict[str, Any]:
    rule, source = node.rules.get(name)
    return {**rule.model_dump(), "source": source}


@router.put("/routing/rules/{name}")
def put_rule(name: str, rule: RoutingRule, node: NodeDep, response: Response, _: CanAdminister) -> dict[str, Any]:
    """Create or replace a rule (it becomes an API rule that the configuration file no longer overrides)."""
    if rule.name != name:
        raise InvalidInput(f"the rule's name {rule.name!r} differs from the URL's {name!r}")
    node.apps.check_rule_apps([rule.app])
    created = node.rules.put(rule)
    response.status_code = 201 if created else 200
    node.router.wake()
    return {**rule.model_dump(), "source": "api"}


@router.delete("/routing/rules/{name}", status_code=204)
def delete_rule(name: str, node: NodeDep, _: CanAdminister) -> Response:
    node.rules.delete(name)
    return Response(status_code=204)


class RoutingPreview(BaseModel):
    study_uid: str
    #: Rules to try instead of the stored ones (e.g. a rule being written); default: the stored rules.
    rules: list[RoutingRule] | None = None


@router.post("/routing/preview")
def preview_routing(body: RoutingPreview, node: NodeDep, _: CanReadJobs) -> dict[str, Any]:
    """Which rules a stored study matches and what each job's input would be; nothing is queued (a dry run
    for whoever is writing a rule)."""
    facts, decisions, _ref = node.router.study_decisions(body.study_uid, dt.datetime.now(dt.UTC), body.rules)
    return {
        "study_uid": facts.study_uid,
        "series": [{"series_uid": s.series_uid, "modality": s.modality, "body_part": s.body_part,
                    "description": s.description, "sop_classes": sorted(s.sop_classes),
                    "calling_aes": sorted(s.calling_aes), "instances": len(s.sop_instance_uids)}
                   for s in facts.series],
        "matches": [{"rule": d.rule, "app": d.app, "priority": d.priority, "series_uids": list(d.series_uids),
                     "instances": len(d.sop_instance_uids), "observations": list(d.observations),
                     "reason": d.reason} for d in decisions],
    }


@router.get("/jobs")
def list_jobs(
    node: NodeDep,
    _: CanReadJobs,
    state: Annotated[str | None, Query(pattern="^(queued|running|retrying|succeeded|failed|dead|cancelled)$")] = None,
    app: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    after: Annotated[int, Query(ge=0, description="jobs with id greater than this")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Jobs, oldest first; page with ``after=<last id>``."""
    return node.queue.search(state=state, app=app, study_uid=study_uid, patient_id=patient_id, limit=limit,
                             after=after)


class JobRequest(BaseModel):
    app: str
    study_uid: str | None = None
    series_uids: list[str] | None = None
    #: For lab apps: ``Patient/<id>``.
    patient: str | None = None
    priority: str = Field("routine", pattern="^(stat|routine)$")
    within_hours: float = Field(720.0, gt=0)


@router.post("/jobs")
def request_job(body: JobRequest, node: NodeDep, response: Response, _: CanWriteJobs) -> dict[str, Any]:
    """Run an app on request. Idempotent: the same app, model version and input give the same job (200)."""
    decision, patient_id, patient_ref = requested_decision(
        node.router, body.app, study_uid=body.study_uid, series_uids=body.series_uids, patient=body.patient,
        within_hours=body.within_hours)
    from dataclasses import replace

    decision = replace(decision, priority=body.priority)
    got = node.router.enqueue(decision, study_uid=body.study_uid, patient_id=patient_id, patient_ref=patient_ref,
                              triggered_at=dt.datetime.now(dt.UTC))
    assert got is not None
    job_id, created = got
    if created:
        node.jobs.notify()
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/jobs/{job_id}"
    return with_correlation(response, node.queue.get(job_id))


@router.get("/jobs/{job_id}")
def get_job(job_id: int, node: NodeDep, response: Response, _: CanReadJobs) -> dict[str, Any]:
    """A job with every attempt (who ran it, how it ended, why), once succeeded its result, and the
    objects it owes its destinations (SR, SEG) with their delivery state."""
    job = node.queue.get(job_id)
    job["writebacks"] = node.outbox.rows(job_id=job_id)
    return with_correlation(response, job)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: int, node: NodeDep, response: Response, _: CanWriteJobs) -> dict[str, Any]:
    outcome = node.queue.cancel(job_id)
    response.status_code = 202 if outcome == "cancelling" else 200
    return node.queue.get(job_id)


@router.post("/jobs/{job_id}/retry")
def retry_job(job_id: int, node: NodeDep, _: CanWriteJobs) -> dict[str, Any]:
    node.queue.retry(job_id, node.settings.jobs.max_attempts)
    node.jobs.notify()
    return node.queue.get(job_id)


@router.get("/jobs/{job_id}/arrays/{name}")
def get_array(job_id: int, name: str, node: NodeDep, _: CanReadJobs) -> Response:
    """A result array (NumPy ``.npy``: a heat-map or a label map) by the name the result gives it."""
    from interop.errors import NotFound

    arrays = node.queue.result_arrays(job_id)
    if name not in arrays:
        raise NotFound(f"job {job_id} has no array {name!r} (it has: {', '.join(sorted(arrays)) or 'none'})")
    with node.blobs.open(arrays[name]) as f:
        data = f.read()
    return Response(content=data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
