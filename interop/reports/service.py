"""From a succeeded job to a report, and a physician's verdict on it.

:class:`Reporter` builds each ``building`` report: it reads the context the result needs from the node's own
FHIR store (the Patient, the ImagingStudy, the order it answers, the lab Observations a lab model read),
retrieves recommendations (:mod:`interop.recommend`), builds the report text and the FHIR transaction Bundle
(:mod:`interop.writeback.fhir_report`), and in one transaction marks the report ``preliminary`` and adds
every write-back it owes: the DICOM objects (SR, SEG, heat-maps) for this node's store and each DICOM or
DICOMweb destination, the Bundle for this node's FHIR facade and each FHIR destination, and a notification
for each webhook when a finding is critical.

:class:`SignOffs` records a verdict (accept, amend, reject) with the AI output it judged, moves the report to
its next status, and in the same transaction adds the sign-off Bundle and, for accept and amend, a verified
SR (predecessor: the report's previous SR) for every destination. Pure decisions live in
:mod:`interop.writeback.fhir_report` and :mod:`interop.writeback.plan`; this module is the glue.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from interop import logs
from interop.errors import Conflict, InvalidInput, NotFound
from interop.jobs.models import Job, JobResult, WriteBack
from interop.jobs.queue import aware, utcnow
from interop.recommend.model import Recommendation
from interop.reports.models import Report, SignOff
from interop.store.db import Database
from interop.writeback.plan import derived_uid, plan
from operators.app_result import AppResult, Coding

if TYPE_CHECKING:
    from interop.config import Settings
    from interop.fhir.store import FhirStore
    from interop.jobs.registry import AppRegistry

log = logging.getLogger(__name__)

LOCAL = "local"
#: A report that could not be built is tried again after this long (doubling, at most an hour).
BUILD_BACKOFF_SECONDS = 10.0


def _first_resource(bundle: dict[str, Any]) -> dict[str, Any] | None:
    for e in bundle.get("entry") or []:
        if (e.get("search") or {}).get("mode", "match") == "match":
            res: dict[str, Any] = e["resource"]
            return res
    return None


def critical_findings(result: AppResult, thresholds: dict[str, float]) -> list[str]:
    """The present findings at or above their critical threshold (pure)."""
    return [f.name for f in result.findings
            if f.present and f.name in thresholds and f.probability >= thresholds[f.name]]


class Reporter:
    def __init__(self, db: Database, fhir: FhirStore, apps: AppRegistry, settings: Settings,
                 destinations: dict[str, str]) -> None:
        """``destinations``: configured destination name -> kind (dicom, dicomweb, fhir, webhook)."""
        self.db = db
        self.fhir = fhir
        self.apps = apps
        self.settings = settings
        self.destinations = destinations
        self._recommender: Any = None
        self._lock = threading.Lock()
        self.on_built: Any = None  # () -> None: wake the outbox

    # -- context from the node's own FHIR store ----------------------------------------------------------------

    def recommender(self) -> Any:
        with self._lock:
            if self._recommender is None:
                from interop.recommend import Recommender, phraser_from_settings

                rs = self.settings.reports
                llm = phraser_from_settings(rs.llm_base_url, rs.llm_model, rs.llm_api_key)
                self._recommender = Recommender(self.settings.data_dir / "recommend", llm=llm)
            return self._recommender

    def _patient(self, job: Job, inputs: dict[str, Any]) -> dict[str, Any]:
        ref = inputs.get("patient")
        if ref:
            type_, _, pid = str(ref).partition("/")
            return dict(self.fhir.read(type_, pid).resource)
        if job.patient_id:
            found = _first_resource(self.fhir.search("Patient", [("identifier", job.patient_id), ("_count", "1")]))
            if found:
                return found
            return {"resourceType": "Patient",
                    "identifier": [{"system": self.settings.reports.patient_identifier_system,
                                    "value": job.patient_id}]}
        raise InvalidInput("the job names no patient; a report needs one")

    def _imaging_study(self, study_uid: str | None) -> dict[str, Any] | None:
        if not study_uid:
            return None
        from interop.fhir.imaging_study import DICOM_UID, sync_imaging_study

        query = [("identifier", f"{DICOM_UID}|urn:oid:{study_uid}"), ("_count", "1")]
        found = _first_resource(self.fhir.search("ImagingStudy", query))
        if found is None:  # the study's sync has not run yet: run it now
            sync_imaging_study(self.db, self.fhir, study_uid)
            found = _first_resource(self.fhir.search("ImagingStudy", query))
        return found

    def _order(self, imaging_study: dict[str, Any] | None) -> dict[str, Any] | None:
        """The order the study answers: the one ServiceRequest whose identifier is the study's Accession
        Number (ORM/OMI placer or filler number). None when there is none or more than one."""
        if not imaging_study:
            return None
        accession = next((i.get("value") for i in imaging_study.get("identifier") or []
                          if any(c.get("code") == "ACSN" for c in (i.get("type") or {}).get("coding") or [])), None)
        if not accession:
            return None
        bundle = self.fhir.search("ServiceRequest", [("identifier", accession), ("_count", "2")])
        matches = [e["resource"] for e in bundle.get("entry") or []]
        return matches[0] if len(matches) == 1 else None

    def _observations(self, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for ref in inputs.get("observations") or []:
            parts = str(ref).split("/")
            if len(parts) >= 4 and parts[2] == "_history":
                out.append(dict(self.fhir.vread(parts[0], parts[1], int(parts[3])).resource))
            else:
                out.append(dict(self.fhir.read(parts[0], parts[1]).resource))
        return out

    def thresholds(self, app: str) -> dict[str, float]:
        spec = self.apps.apps.get(app)
        out = dict(spec.critical) if spec else {}
        out.update(self.settings.reports.critical)
        return out

    # -- building -------------------------------------------------------------------------------------------

    def report_input(self, report: Report, job: Job, result: AppResult, content: dict[str, Any]) -> Any:
        """The :class:`ReportInput` of a report from its stored content."""
        from interop.writeback.fhir_report import ReportInput

        return ReportInput(
            key=job.idempotency_key, job_id=job.id, result=result, patient=content["patient"],
            imaging_study=content.get("imaging_study"), order=content.get("order"),
            observations=content.get("observations") or [],
            recommendations=[Recommendation(**{**r, "code": Coding(**r["code"])})
                             for r in content.get("recommendations") or []],
            critical=list(content.get("critical") or []), text=content["text"],
            issued=dt.datetime.fromisoformat(content["issued"]))

    def build(self, report_id: int) -> None:
        from interop.writeback.fhir_report import preliminary_bundle

        with self.db.reading() as s:
            report = s.get(Report, report_id)
            if report is None or report.state not in ("building", "failed"):
                return
            job = s.get(Job, report.job_id)
            res = s.scalars(select(JobResult).where(JobResult.job_id == report.job_id)).one()
            assert job is not None
            s.expunge_all()
        result = AppResult.model_validate(json.loads(res.content))
        inputs = json.loads(job.inputs)
        patient = self._patient(job, inputs)
        imaging_study = self._imaging_study(job.study_uid)
        recs: list[Recommendation] = []
        if self.settings.reports.recommendations:
            recs = self.recommender().recommend(result)
            text = self.recommender().report_text(result, recs)
        else:
            from interop.recommend import build_report_text

            text = build_report_text(result, recs)
        critical = critical_findings(result, self.thresholds(report.app))
        content = {
            "patient": patient, "imaging_study": imaging_study, "order": self._order(imaging_study),
            "observations": self._observations(inputs),
            "recommendations": [{**asdict(r), "code": r.code.model_dump()} for r in recs],
            "critical": critical, "text": text, "issued": utcnow().isoformat(),
        }
        bundle = preliminary_bundle(self.report_input(report, job, result, content))
        planned = plan(job.idempotency_key, inputs, result, self.dicom_destinations())
        now = utcnow()
        with self.db.writing() as s:
            r = s.get(Report, report_id)
            if r is None or r.state not in ("building", "failed"):
                return
            r.content = json.dumps(content)
            r.critical = json.dumps(critical)
            r.priority = "stat" if critical else "routine"
            r.state = "preliminary"
            r.error = None
            r.updated_at = now
            r.sr_sop_uid = next((p.sop_instance_uid for p in planned if p.kind == "sr"), None)
            for p in planned:
                s.add(WriteBack(job_id=job.id, report_id=r.id, destination=p.destination, kind=p.kind,
                                item=p.item, object_key=p.sop_instance_uid, sop_instance_uid=p.sop_instance_uid,
                                series_instance_uid=p.series_instance_uid, state="pending", attempts=0,
                                created_at=now))
            payload = json.dumps(bundle)
            for dest in [LOCAL, *self.of_kind("fhir")]:
                s.add(WriteBack(job_id=job.id, report_id=r.id, destination=dest, kind="fhir",
                                object_key=f"fhir:{job.idempotency_key}:0", payload=payload, state="pending",
                                attempts=0, created_at=now))
            if critical:
                note = json.dumps(self.notification(r, result, critical, patient))
                for dest in self.of_kind("webhook"):
                    s.add(WriteBack(job_id=job.id, report_id=r.id, destination=dest, kind="webhook",
                                    object_key=f"critical:{job.idempotency_key}", payload=note, state="pending",
                                    attempts=0, created_at=now))
        log.info("report %s of job %s built: %d recommendation(s)%s", report_id, job.id, len(recs),
                 f", critical: {', '.join(critical)}" if critical else "")

    def notification(self, report: Report, result: AppResult, critical: list[str],
                     patient: dict[str, Any]) -> dict[str, Any]:
        """The webhook body of a critical result (no more patient data than needed to find it)."""
        by_name = {f.name: f for f in result.findings}
        return {
            "type": "critical-ai-finding", "report_id": report.id, "job_id": report.job_id,
            "app": result.app.name, "model": f"{result.model.name} {result.model.version}",
            "demonstration": result.model.demonstration, "notice": result.notice,
            "study_instance_uid": report.study_uid,
            "patient_identifier": (patient.get("identifier") or [{}])[0],
            "findings": [{"name": n, "display": by_name[n].code.display, "probability": by_name[n].probability}
                         for n in critical],
            "status": "preliminary: not yet reviewed by a physician",
        }

    def of_kind(self, kind: str) -> list[str]:
        return [name for name, k in self.destinations.items() if k == kind]

    def dicom_destinations(self) -> list[str]:
        return [LOCAL, *self.of_kind("dicom"), *self.of_kind("dicomweb")]

    def build_due(self, limit: int = 5) -> int:
        now = utcnow()
        with self.db.reading() as s:
            rows = list(s.execute(select(Report.id, Report.state, Report.attempts, Report.updated_at)
                                  .where(Report.state.in_(("building", "failed"))).order_by(Report.id).limit(50)))
        due = [r.id for r in rows if r.state == "building" or (
            (aware(r.updated_at) or now) + dt.timedelta(seconds=min(3600.0, BUILD_BACKOFF_SECONDS * 2 ** r.attempts))
            <= now)]
        for rid in due[:limit]:
            with logs.correlated(self.correlation_id(rid)):
                self._build_or_keep_reason(rid)
        if due and self.on_built:
            self.on_built()
        return len(due[:limit])

    def correlation_id(self, report_id: int) -> str | None:
        """The correlation id of the report's job (interop.logs)."""
        with self.db.reading() as s:
            return logs.of_inputs(s.scalar(select(Job.inputs).join(Report, Report.job_id == Job.id)
                                           .where(Report.id == report_id)))

    def _build_or_keep_reason(self, rid: int) -> None:
        try:
            self.build(rid)
        except Exception as exc:  # the reason is kept on the report; it is tried again later
            log.warning("report %s could not be built: %s", rid, exc, exc_info=True)
            with self.db.writing() as s:
                r = s.get(Report, rid)
                if r is not None:
                    r.state, r.error = "failed", f"{type(exc).__name__}: {exc}"
                    r.attempts += 1
                    r.updated_at = utcnow()

    def warm(self) -> None:
        """Load the recommender (its embedding model takes seconds) in the background, so that the first
        report does not wait for it."""
        if not self.settings.reports.recommendations:
            return

        def run() -> None:
            try:
                self.recommender().warm()
            except Exception as exc:  # the first report will try again, and say why if it fails
                log.warning("recommender not warmed: %s", exc)

        threading.Thread(target=run, name="recommender-warm", daemon=True).start()


# -- reading and signing ----------------------------------------------------------------------------------------

ACTIONS = ("accept", "amend", "reject")


class SignOffs:
    """The physician's verdicts (``POST /api/reports/{id}/signoff``) and the feedback export."""

    def __init__(self, db: Database, reporter: Reporter) -> None:
        self.db = db
        self.reporter = reporter
        self.on_signed: Any = None  # () -> None: wake the outbox

    def verdict(self, report_id: int, *, action: str, reader_id: str, reader_name: str, reason: str | None = None,
                conclusion: str | None = None, findings: dict[str, bool] | None = None,
                client_id: str | None = None) -> dict[str, Any]:
        from interop.writeback.fhir_report import Verdict, report_status_after, signoff_bundle

        if action not in ACTIONS:
            raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}", expression="action")
        if action == "reject" and not (reason or "").strip():
            raise InvalidInput("a rejection needs its reason", expression="reason")
        findings = dict(findings or {})
        if findings and action != "amend":
            raise InvalidInput(f"changed findings make an amendment, not an {action}: send action 'amend'",
                               expression="findings")
        if not reader_id.strip() or not reader_name.strip():
            raise InvalidInput("the verdict needs its reader's id and name (the token names no person)")
        now = utcnow()
        with self.db.writing() as s:
            r = s.get(Report, report_id, with_for_update=True)
            if r is None:
                raise NotFound(f"no report {report_id}")
            if r.state in ("building", "failed"):
                raise Conflict(f"report {report_id} is still being built ({r.state}); it can't be signed yet")
            if r.state in ("cancelled", "entered-in-error"):
                raise Conflict(f"report {report_id} was rejected ({r.state}); it can't be signed again")
            if action == "amend" and not (findings or (conclusion or "").strip()):
                raise InvalidInput("an amendment needs the physician's edits (findings and/or conclusion)")
            job = s.get(Job, r.job_id)
            res = s.scalars(select(JobResult).where(JobResult.job_id == r.job_id)).one()
            assert job is not None and r.content is not None
            result = AppResult.model_validate(json.loads(res.content))
            unknown = set(findings) - {f.name for f in result.findings}
            if unknown:
                raise InvalidInput(f"the result has no finding(s) named {', '.join(sorted(unknown))}",
                                   expression="findings")
            sequence = r.verdicts + 1
            before = r.state
            after = report_status_after(before, action)
            try:
                verdict = Verdict(action=action, sequence=sequence, reader_id=reader_id,  # type: ignore[arg-type]
                                  reader_name=reader_name, at=now, previous_status=before, reason=reason,
                                  conclusion=conclusion, findings=findings)
            except ValueError as exc:  # the verdict's own checks: what the reader sent can't make a verdict
                raise InvalidInput(f"report {report_id} can't be signed: {exc}") from exc
            try:
                inp = self.reporter.report_input(r, job, result, json.loads(r.content))
                bundle = signoff_bundle(inp, verdict)
            except ValueError as exc:  # the stored report's context can't make the signed report
                raise Conflict(f"report {report_id} can't be signed: {exc}") from exc
            sr_uid = None
            inputs = json.loads(job.inputs)
            if action != "reject" and r.sr_sop_uid and inputs.get("sop_instance_uids"):
                sr_uid = derived_uid(job.idempotency_key, "sr", 0, "signoff", sequence)
            so = SignOff(report_id=r.id, sequence=sequence, action=action, reader_id=reader_id,
                         reader_name=reader_name, reason=reason, conclusion=conclusion,
                         findings=json.dumps(findings), status_before=before, status_after=after,
                         ai_output=res.content, sr_sop_uid=sr_uid, created_at=now)
            s.add(so)
            s.flush()
            payload = json.dumps(bundle)
            for dest in [LOCAL, *self.reporter.of_kind("fhir")]:
                s.add(WriteBack(job_id=job.id, report_id=r.id, signoff_id=so.id, destination=dest, kind="fhir",
                                object_key=f"fhir:{job.idempotency_key}:{sequence}", payload=payload,
                                state="pending", attempts=0, created_at=now))
            if sr_uid:
                series = derived_uid(job.idempotency_key, "sr", "signoff", "series")
                for dest in self.reporter.dicom_destinations():
                    s.add(WriteBack(job_id=job.id, report_id=r.id, signoff_id=so.id, destination=dest, kind="sr",
                                    item=0, object_key=sr_uid, sop_instance_uid=sr_uid, series_instance_uid=series,
                                    state="pending", attempts=0, created_at=now))
                r.sr_sop_uid = sr_uid
            r.state = after
            r.verdicts = sequence
            r.updated_at = now
            # The verdict's own AuditEvent, in the same transaction (interop.audit).
            from interop.audit import signoff_event

            self.reporter.fhir.create(signoff_event(
                report_id=r.id, action=action, status_after=after, reader_id=reader_id, reader_name=reader_name,
                client_id=client_id, reason=reason, at=now,
                report_identifier={"system": "urn:interop:ai-result", "value": f"{job.idempotency_key}/report"}),
                session=s)
            out = {"report_id": r.id, "sequence": sequence, "action": action, "status_before": before,
                   "status": after, "verified_sr": sr_uid}
        with logs.correlated(logs.of_inputs(inputs)):
            log.info("report %s: %s by %s -> %s", report_id, action, reader_id, after)
        if self.on_signed:
            self.on_signed()
        return out

    # -- reading --------------------------------------------------------------------------------------------

    def summary(self, r: Report, result: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": r.id, "job_id": r.job_id, "app": r.app, "model": {"name": r.model_name, "version": r.model_version,
                                                                    "demonstration": r.demonstration},
            "patient_id": r.patient_id, "study_uid": r.study_uid, "status": r.state, "priority": r.priority,
            "critical": json.loads(r.critical), "verdicts": r.verdicts, "sr_sop_instance_uid": r.sr_sop_uid,
            "error": r.error, "created_at": aware(r.created_at), "updated_at": aware(r.updated_at)}
        return out

    def reports(self, *, status: str | None = None, priority: str | None = None, app: str | None = None,
             patient_id: str | None = None, study_uid: str | None = None, limit: int = 100,
             offset: int = 0) -> list[dict[str, Any]]:
        """Reports, stat before routine, oldest first (a worklist's order)."""
        from sqlalchemy import case

        q = select(Report)
        if status:
            q = q.where(Report.state.in_(status.split(",")))
        if priority:
            q = q.where(Report.priority == priority)
        if app:
            q = q.where(Report.app == app)
        if patient_id:
            q = q.where(Report.patient_id == patient_id)
        if study_uid:
            q = q.where(Report.study_uid == study_uid)
        q = q.order_by(case((Report.priority == "stat", 0), else_=1), Report.created_at, Report.id)
        with self.db.reading() as s:
            return [self.summary(r) for r in s.scalars(q.limit(limit).offset(offset))]

    def get(self, report_id: int) -> dict[str, Any]:
        with self.db.reading() as s:
            r = s.get(Report, report_id)
            if r is None:
                raise NotFound(f"no report {report_id}")
            out = self.summary(r)
            res = s.scalars(select(JobResult).where(JobResult.job_id == r.job_id)).first()
            content = json.loads(r.content) if r.content else {}
            out["result"] = json.loads(res.content) if res else None
            out["text"] = content.get("text")
            out["recommendations"] = content.get("recommendations") or []
            out["signoffs"] = [{"sequence": so.sequence, "action": so.action, "reader_id": so.reader_id,
                                "reader_name": so.reader_name, "reason": so.reason, "conclusion": so.conclusion,
                                "findings": json.loads(so.findings), "status_before": so.status_before,
                                "status": so.status_after, "verified_sr": so.sr_sop_uid,
                                "at": aware(so.created_at)}
                               for so in s.scalars(select(SignOff).where(SignOff.report_id == r.id)
                                                   .order_by(SignOff.sequence))]
            return out

    FEEDBACK_COLUMNS = ("signoff_id", "report_id", "job_id", "app", "model_name", "model_version", "demonstration",
                        "study_uid", "patient_id", "sequence", "action", "status_before", "status_after", "at",
                        "reader_id", "reason", "conclusion", "kind", "name", "code_system", "code",
                        "ai_value", "ai_probability", "ai_threshold", "physician_value", "agrees")

    def feedback_rows(self, app: str | None = None) -> list[dict[str, Any]]:
        """One row per verdict and finding (or classification): the AI's output beside the physician's
        verdict. A finding the physician did not override takes the AI's value on accept and amend (they
        signed it), and none on reject (the whole report was refused; ``agrees`` is empty)."""
        q = select(SignOff, Report).join(Report, Report.id == SignOff.report_id).order_by(SignOff.id)
        if app:
            q = q.where(Report.app == app)
        rows: list[dict[str, Any]] = []
        with self.db.reading() as s:
            for so, r in s.execute(q):
                result = AppResult.model_validate(json.loads(so.ai_output))
                overrides: dict[str, bool] = json.loads(so.findings)
                base = {"signoff_id": so.id, "report_id": r.id, "job_id": r.job_id, "app": r.app,
                        "model_name": r.model_name, "model_version": r.model_version,
                        "demonstration": r.demonstration, "study_uid": r.study_uid, "patient_id": r.patient_id,
                        "sequence": so.sequence, "action": so.action, "status_before": so.status_before,
                        "status_after": so.status_after, "at": aware(so.created_at).isoformat(),  # type: ignore[union-attr]
                        "reader_id": so.reader_id, "reason": so.reason, "conclusion": so.conclusion}
                for f in result.findings:
                    physician: bool | None = overrides.get(f.name)
                    if physician is None and so.action != "reject":
                        physician = f.present
                    rows.append({**base, "kind": "finding", "name": f.name, "code_system": f.code.system,
                                 "code": f.code.code, "ai_value": f.present, "ai_probability": f.probability,
                                 "ai_threshold": f.threshold, "physician_value": physician,
                                 "agrees": None if physician is None else physician == f.present})
                for c in result.classifications:
                    rows.append({**base, "kind": "classification", "name": c.name, "code_system": c.code.system,
                                 "code": c.code.code, "ai_value": c.predicted,
                                 "ai_probability": c.probabilities.get(c.predicted), "ai_threshold": None,
                                 "physician_value": None if so.action == "reject" else c.predicted,
                                 "agrees": None if so.action == "reject" else True})
                if not result.findings and not result.classifications:
                    rows.append({**base, "kind": "report", "name": r.app, "code_system": None, "code": None,
                                 "ai_value": None, "ai_probability": None, "ai_threshold": None,
                                 "physician_value": None, "agrees": so.action != "reject"})
        return rows

    def feedback_csv(self, app: str | None = None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.FEEDBACK_COLUMNS), lineterminator="\n")
        w.writeheader()
        for row in self.feedback_rows(app):
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return buf.getvalue()
