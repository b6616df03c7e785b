"""The router: reads the study-readiness log and changed lab results, applies the rules, queues jobs.

It follows two logs by durable cursors (``router_cursors``): ``study_events`` by id, and Observations by
their last update (re-reading a short overlap, because a transaction that started earlier can commit later).
Reading an event twice is harmless: a job's idempotency key (app + model version + exact input) is unique.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, or_, select

from interop import logs
from interop.background import Loop
from interop.config import JobSettings, RoutingRule
from interop.errors import NotFound
from interop.fhir.imaging_study import sync_imaging_study
from interop.fhir.models import FhirResource, FhirSearchIndex
from interop.fhir.store import FhirStore
from interop.hl7v2.models import Hl7Message
from interop.jobs.models import RouterCursor
from interop.jobs.queue import JobQueue, NewJob, aware, utcnow
from interop.jobs.registry import AppRegistry
from interop.mlops.registry import ModelRegistry
from interop.routing.decide import Decision, LabFact, SeriesFacts, StudyFacts, decide_labs, decide_study, lab_codes
from interop.routing.rules import RuleStore
from interop.store.db import Database
from interop.store.models import Instance, Series, Study, StudyEvent

log = logging.getLogger(__name__)

#: How far back the Observation cursor re-reads (a write that began before the cursor may commit after it).
OVERLAP = dt.timedelta(seconds=10)
#: How long before a lab result's storing the HL7 message that stored it is looked for (its correlation id).
LAB_ORIGIN_WINDOW = dt.timedelta(seconds=60)


def lab_fact(resource: dict[str, Any]) -> LabFact | None:
    """An Observation as a :class:`LabFact`; None when it has no usable time."""
    when = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start") \
        or resource.get("effectiveInstant") or resource.get("issued")
    if not when:
        return None
    try:
        t = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    codings = (resource.get("code") or {}).get("coding", [])
    codes = frozenset(f"{c.get('system', '')}|{c.get('code', '')}" for c in codings)
    version = (resource.get("meta") or {}).get("versionId", "1")
    return LabFact(f"Observation/{resource['id']}/_history/{version}", codes, t, str(resource.get("status", "")))


class Router:
    def __init__(self, db: Database, fhir: FhirStore, rules: RuleStore, registry: AppRegistry, queue: JobQueue,
                 settings: JobSettings, on_new_jobs: Callable[[list[int]], None] | None = None,
                 lab_page: int = 2000, models: ModelRegistry | None = None) -> None:
        self.db = db
        #: Which model version each rule runs, and which runs in shadow (None: the apps' own bundles).
        self.models = models
        self.fhir = fhir
        self.rules = rules
        self.registry = registry
        self.queue = queue
        self.settings = settings
        self.on_new_jobs = on_new_jobs
        self._loop = Loop("router", self.poll, 1.0)
        #: Observations read per page of the lab log.
        self.lab_page = lab_page
        #: Observation versions already routed inside the overlap window: (pk, version) -> last_updated.
        self._seen: dict[tuple[int, int], dt.datetime] = {}

    # -- cursors --------------------------------------------------------------------------------------------

    def _cursor(self, name: str) -> RouterCursor:
        with self.db.reading() as s:
            row = s.get(RouterCursor, name)
            return RouterCursor(name=name, position=row.position if row else 0, at=aware(row.at) if row else None)

    def _save_cursor(self, name: str, position: int = 0, at: dt.datetime | None = None) -> None:
        with self.db.writing() as s:
            row = s.get(RouterCursor, name)
            if row is None:
                s.add(RouterCursor(name=name, position=position, at=at))
            else:
                row.position = position
                row.at = at

    # -- facts ----------------------------------------------------------------------------------------------

    def study_facts(self, study_uid: str, ready_at: dt.datetime) -> StudyFacts | None:
        with self.db.reading() as s:
            study = s.scalars(select(Study).where(Study.study_uid == study_uid)).first()
            if study is None:
                return None
            rows = s.execute(select(Series.series_uid, Series.modality, Series.body_part_examined,
                                    Series.series_description, Instance.sop_uid, Instance.sop_class_uid,
                                    Instance.calling_ae)
                             .join(Instance, Instance.series_pk == Series.id)
                             # Our own results (the write-back's SR/SEG) are never routed to an app again.
                             .where(Series.study_pk == study.id, Instance.source != "writeback")).all()
            patient_id = study.patient_id
        by_series: dict[str, dict[str, Any]] = {}
        for r in rows:
            d = by_series.setdefault(r.series_uid, {"modality": r.modality, "body_part": r.body_part_examined,
                                                    "description": r.series_description, "classes": set(),
                                                    "aes": set(), "sops": []})
            d["classes"].add(r.sop_class_uid)
            if r.calling_ae:
                d["aes"].add(r.calling_ae)
            d["sops"].append(r.sop_uid)
        series = tuple(SeriesFacts(uid, d["modality"], d["body_part"], d["description"], frozenset(d["classes"]),
                                   frozenset(d["aes"]), tuple(sorted(d["sops"])))
                       for uid, d in sorted(by_series.items()))
        return StudyFacts(study_uid, patient_id, series, ready_at)

    def _patient_refs(self, patient_id: str) -> list[str]:
        """FHIR Patients whose identifier value is the DICOM Patient ID."""
        bundle = self.fhir.search("Patient", [("identifier", patient_id), ("_count", "20")])
        return [f"Patient/{e['resource']['id']}" for e in bundle["entry"] if e.get("search", {}).get("mode") == "match"]

    def patient_labs(self, patient_ref: str, codes: set[str]) -> list[LabFact]:
        if not codes:
            return []
        params = [("subject", patient_ref), ("code", ",".join(sorted(codes))), ("_count", "1000")]
        bundle = self.fhir.search("Observation", params)
        facts = [lab_fact(e["resource"]) for e in bundle["entry"] if e.get("search", {}).get("mode") == "match"]
        return [f for f in facts if f is not None]

    # -- decisions to jobs ----------------------------------------------------------------------------------

    def enqueue(self, d: Decision, *, study_uid: str | None, patient_id: str | None, patient_ref: str | None,
                triggered_at: dt.datetime) -> tuple[int, bool] | None:
        try:
            spec = self.registry.get(d.app)
        except Exception:
            log.error("rule %s names app %s, which is not installed; nothing queued", d.rule, d.app)
            return None
        inputs: dict[str, Any]
        if spec.input == "labs":
            inputs = {"patient": patient_ref, "observations": list(d.observations)}
        else:
            inputs = {"series_uids": list(d.series_uids), "sop_instance_uids": list(d.sop_instance_uids)}
            if d.observations:
                inputs["observations"] = list(d.observations)
        if self.models is not None:
            version, shadow = self.models.resolve(spec.name, d.rule)
        else:
            version, shadow = spec.model_version(), None
        # The correlation id rides in the stored inputs, outside the key: the same input is the same job.
        cid = logs.study_id(study_uid) if study_uid else (
            logs.current() or logs.job_id(spec.idempotency_key(version, inputs)))
        job = NewJob(idempotency_key=spec.idempotency_key(version, inputs), app=spec.name, app_version=spec.version,
                     model_version=version, rule=d.rule, trigger=d.trigger, priority=d.priority,
                     inputs={**inputs, "correlation_id": cid},
                     study_uid=study_uid, patient_id=patient_id, max_attempts=self.settings.max_attempts,
                     backoff_seconds=self.settings.backoff_seconds,
                     timeout_seconds=spec.timeout_seconds or self.settings.timeout_seconds, triggered_at=triggered_at)
        job_id, created = self.queue.enqueue(job)
        with logs.correlated(cid):
            # Not d.reason: it names the matching series by UID (the routing preview API shows it).
            log.info("%s job %s: %s by rule %s (%s trigger, %s)", "queued" if created else "already have", job_id,
                     d.app, d.rule, d.trigger, d.priority)
        if created and shadow is not None:
            # The shadow version on the same input, last in line (interop.mlops): compared, never reported.
            shadow_id, _ = self.queue.enqueue(replace(
                job, idempotency_key=spec.idempotency_key(shadow, inputs, shadow=True), model_version=shadow,
                priority="shadow", shadow=True, shadow_of=job_id))
            log.info("queued shadow job %s: %s model %s beside job %s (%s)", shadow_id, d.app, shadow, job_id,
                     version)
        return job_id, created

    def study_decisions(self, study_uid: str, ready_at: dt.datetime,
                        rules: list[RoutingRule] | None = None) -> tuple[StudyFacts, list[Decision], str | None]:
        """What ``rules`` (default: the stored ones) decide for a stored study; nothing is queued."""
        facts = self.study_facts(study_uid, ready_at)
        if facts is None:
            raise NotFound(f"no study {study_uid}")
        rules = self.rules.rules() if rules is None else rules
        labs: list[LabFact] = []
        patient_ref: str | None = None
        needs_labs = any(r.enabled and r.study is not None and r.labs is not None for r in rules)
        if needs_labs and facts.patient_id:
            refs = self._patient_refs(facts.patient_id)
            patient_ref = refs[0] if refs else None
            for ref in refs:
                labs += self.patient_labs(ref, lab_codes(rules))
        return facts, decide_study(rules, facts, labs), patient_ref

    def route_study(self, study_uid: str, ready_at: dt.datetime) -> list[int]:
        with logs.correlated(logs.study_id(study_uid)):
            return self._route_study(study_uid, ready_at)

    def _route_study(self, study_uid: str, ready_at: dt.datetime) -> list[int]:
        try:
            facts, decisions, patient_ref = self.study_decisions(study_uid, ready_at)
        except NotFound:
            return []
        new: list[int] = []
        for d in decisions:
            got = self.enqueue(d, study_uid=study_uid, patient_id=facts.patient_id, patient_ref=patient_ref,
                               triggered_at=ready_at)
            if got and got[1]:
                new.append(got[0])
        return new

    def route_patient(self, patient_ref: str, now: dt.datetime | None = None,
                      triggered_at: dt.datetime | None = None) -> list[int]:
        """Lab-only rules for one patient; ``triggered_at`` (when the newest result was stored) starts the
        job's latency clock."""
        rules = [r for r in self.rules.rules() if r.enabled and r.study is None and r.labs is not None]
        if not rules:
            return []
        labs = self.patient_labs(patient_ref, lab_codes(rules))
        now = now or utcnow()
        try:
            patient = self.fhir.read("Patient", patient_ref.partition("/")[2]).resource
            idents = [i.get("value") for i in patient.get("identifier", []) if i.get("value")]
        except Exception:
            idents = []
        new: list[int] = []
        for d in decide_labs(rules, labs, now):
            origin = self.lab_origin(d.observations, (triggered_at or now) - LAB_ORIGIN_WINDOW)
            with logs.correlated(origin):
                got = self.enqueue(d, study_uid=None, patient_id=idents[0] if idents else patient_ref,
                                   patient_ref=patient_ref, triggered_at=triggered_at or now)
            if got and got[1]:
                new.append(got[0])
        return new

    def lab_origin(self, observations: tuple[str, ...] | list[str], since: dt.datetime) -> str | None:
        """The correlation id of the newest HL7 message since ``since`` that wrote one of ``observations``
        (``Observation/<id>/_history/<v>``; the message log lists the ``Type/id`` each message wrote); None
        for results that came another way (the FHIR API)."""
        refs = sorted({"/".join(str(o).split("/")[:2]) for o in observations})
        if not refs:
            return None
        with self.db.reading() as s:
            row = s.execute(select(Hl7Message.sending_application, Hl7Message.sending_facility, Hl7Message.control_id)
                            .where(Hl7Message.received_at >= since, Hl7Message.control_id.is_not(None),
                                   or_(*(Hl7Message.resources.contains(f'"{r}"', autoescape=True) for r in refs)))
                            .order_by(Hl7Message.id.desc()).limit(1)).first()
        return logs.hl7_id(row.sending_application, row.sending_facility, row.control_id) if row else None

    # -- the loop -------------------------------------------------------------------------------------------

    def poll(self) -> list[int]:
        """One pass over both logs; returns the ids of jobs queued."""
        new: list[int] = []
        cur = self._cursor("study_events")
        with self.db.reading() as s:
            events = list(s.scalars(select(StudyEvent).where(StudyEvent.id > cur.position, StudyEvent.kind == "ready")
                                    .order_by(StudyEvent.id).limit(200)))
        for ev in events:
            try:
                sync_imaging_study(self.db, self.fhir, ev.study_uid)
            except Exception:  # the FHIR view must never hold up the AI work
                with logs.correlated(logs.study_id(ev.study_uid)):
                    log.exception("ImagingStudy not written")
            new += self.route_study(ev.study_uid, aware(ev.at) or utcnow())
            self._save_cursor("study_events", ev.id)
        lab_rules = [r for r in self.rules.rules() if r.enabled and r.study is None and r.labs is not None]
        if lab_rules:
            new += self._poll_labs(lab_codes(lab_rules))
        if new and self.on_new_jobs:
            self.on_new_jobs(new)
        return new

    def _poll_labs(self, wanted: set[str]) -> list[int]:
        """Route the patients whose Observations changed since the cursor (minus :data:`OVERLAP`). The window is
        read in keyset pages of ``(last_updated, pk)``, narrow columns first; only versions not yet
        routed have their code and subject read (from the search index). The cursor is saved after each
        page's patients are routed, so a window holding more Observations than a page (a burst, or a
        first start over a filled store) is read to its end instead of the same first page again, and a
        crash mid-window loses nothing. Only a patient with a fresh Observation whose code is in some
        lab rule's set is routed: another result can make no lab set newly complete (a lab feed's
        metabolic panels then cost the router one read each, not a search). ``wanted``: the
        ``system|code`` tokens of the enabled lab rules' sets."""
        cur = self._cursor("observations")
        since = (cur.at - OVERLAP) if cur.at else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        self._seen = {k: t for k, t in self._seen.items() if t > since}
        high = cur.at
        after: tuple[Any, int] | None = None
        new: list[int] = []
        while True:
            q = select(FhirResource.pk, FhirResource.version_id, FhirResource.last_updated).where(
                FhirResource.res_type == "Observation", FhirResource.last_updated > since)
            if after is not None:
                q = q.where(or_(FhirResource.last_updated > after[0],
                                and_(FhirResource.last_updated == after[0], FhirResource.pk > after[1])))
            with self.db.reading() as s:
                page = s.execute(q.order_by(FhirResource.last_updated, FhirResource.pk)
                                 .limit(self.lab_page)).all()
                fresh = [r for r in page if (r.pk, r.version_id) not in self._seen]
                # code and subject from the search index (covering index by resource): no content to parse
                codes: dict[int, set[str]] = {}
                subjects: dict[int, str] = {}
                if fresh:
                    for pk, param, system, value in s.execute(
                            select(FhirSearchIndex.resource_pk, FhirSearchIndex.param, FhirSearchIndex.system,
                                   FhirSearchIndex.value).where(FhirSearchIndex.resource_pk.in_([r.pk for r in fresh]),
                                                                FhirSearchIndex.param.in_(("code", "subject")))):
                        if param == "code":
                            codes.setdefault(pk, set()).add(f"{system or ''}|{value or ''}")
                        elif system == "Patient" and value:
                            subjects[pk] = f"Patient/{value}"
            if not page:
                break
            after = (page[-1].last_updated, page[-1].pk)
            patients: dict[str, dt.datetime] = {}
            for r in fresh:
                stored = aware(r.last_updated) or since
                subject = subjects.get(r.pk)
                if subject and codes.get(r.pk, set()) & wanted:
                    patients[subject] = max(stored, patients.get(subject, stored))
            for ref, stored in sorted(patients.items()):
                new += self.route_patient(ref, triggered_at=stored)
            for r in fresh:  # routed: not again while inside the overlap
                self._seen[(r.pk, r.version_id)] = aware(r.last_updated) or since
            latest = aware(page[-1].last_updated)
            if latest is not None and (high is None or latest > high):
                self._save_cursor("observations", 0, latest)
                high = latest
            if len(page) < self.lab_page:
                break
        return new

    def wake(self) -> None:
        self._loop.wake()

    def start(self) -> None:
        self._loop.start(at_once=True)

    def stop(self) -> None:
        self._loop.stop()


def requested_decision(router: Router, app: str, *, study_uid: str | None, series_uids: list[str] | None,
                       patient: str | None, within_hours: float) -> tuple[Decision, str | None, str | None]:
    """The job a person asked for: ``app`` on a study (all series, or those named) or on a patient's latest
    results for the app's lab set. Returns the decision, the patient id and the FHIR patient reference."""
    from interop.config import LabMatch
    from interop.errors import InvalidInput, NotFound
    from interop.routing.decide import lab_set, lab_token

    spec = router.registry.get(app)
    now = utcnow()
    if spec.input == "labs":
        if not patient or not patient.startswith("Patient/"):
            raise InvalidInput(f"app {app} reads labs: give 'patient' as Patient/<id>")
        if not spec.labs:
            raise InvalidInput(f"app {app} declares no lab set in its app.yaml")
        router.fhir.read("Patient", patient.partition("/")[2])
        labs = router.patient_labs(patient, {lab_token(c) for c in spec.labs})
        chosen, missing = lab_set(LabMatch(codes=list(spec.labs), within_hours=within_hours), labs, now)
        if missing:
            raise InvalidInput(f"{patient} has no result within {within_hours:g} h for: {', '.join(missing)}")
        d = Decision(rule="request", app=app, priority="routine", trigger="request", observations=tuple(chosen),
                     reason="requested through the API")
        return d, None, patient
    if not study_uid:
        raise InvalidInput(f"app {app} reads images: give 'study_uid'")
    facts = router.study_facts(study_uid, now)
    if facts is None:
        raise NotFound(f"no study {study_uid}")
    series = [s for s in facts.series if not series_uids or s.series_uid in series_uids]
    if series_uids and len(series) != len(set(series_uids)):
        raise NotFound(f"study {study_uid} does not hold every series named")
    d = Decision(rule="request", app=app, priority="routine", trigger="request",
                 series_uids=tuple(sorted(s.series_uid for s in series)),
                 sop_instance_uids=tuple(sorted(u for s in series for u in s.sop_instance_uids)),
                 reason="requested through the API")
    return d, facts.patient_id, None
