"""Prometheus metrics of the node (``GET /metrics``, text exposition format 0.0.4).

Counters and histograms are recorded where the work happens (the one ingest path, the HL7 message log, the
job worker, the FHIR router); the job queue's depth is read from the database at scrape time, so it is
right whichever process (server or Celery worker) changed it. No label carries patient data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES = Counter("interop_dicom_instances_received", "DICOM instances received, by path and outcome",
                    ["source", "outcome"], registry=REGISTRY)
BYTES = Counter("interop_dicom_bytes_received", "Bytes of DICOM instances stored", ["source"], registry=REGISTRY)
STUDIES_READY = Counter("interop_studies_ready", "Studies that became ready for routing", registry=REGISTRY)
STUDY_READY_SECONDS = Histogram("interop_study_ready_seconds",
                                "From a study's first instance received (or its reopening) to ready for routing",
                                registry=REGISTRY, buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600))
ASSOCIATIONS = Counter("interop_dicom_associations", "DICOM associations requested of the listener, by outcome "
                       "(accepted, rejected) and the reason of a rejection", ["outcome", "reason"], registry=REGISTRY)
ASSOCIATIONS_ACTIVE = Gauge("interop_dicom_associations_active", "DICOM associations accepted and not yet ended",
                            registry=REGISTRY)
HL7_MESSAGES = Counter("interop_hl7_messages", "HL7 v2 messages answered, by message type and ACK code",
                       ["message_type", "ack"], registry=REGISTRY)
JOB_ATTEMPTS = Counter("interop_job_attempts", "Job attempts ended, by app, model version and outcome",
                       ["app", "model_version", "outcome"], registry=REGISTRY)
JOB_SECONDS = Histogram("interop_job_attempt_seconds", "Wall time of a job attempt (child process included)",
                        ["app", "model_version"], registry=REGISTRY,
                        buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600))
TRIGGER_TO_START = Histogram("interop_job_trigger_to_start_seconds",
                             "From the trigger (study ready, lab set stored) to the job's first attempt",
                             ["app"], registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
INFERENCE_SECONDS = Histogram("interop_app_inference_seconds", "The app's own inference time (its result's timing)",
                              ["app", "model_version"], registry=REGISTRY,
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
FHIR_SECONDS = Histogram("interop_fhir_request_seconds", "FHIR REST request latency by interaction and status class",
                         ["interaction", "status"], registry=REGISTRY,
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


AUDIT_FAILURES = Counter("interop_audit_events_lost", "AuditEvents that could not be written (see the log)",
                         registry=REGISTRY)
WRITEBACKS = Counter("interop_writeback_deliveries", "Write-back deliveries ended, by destination, object kind and "
                     "outcome (sent, retrying, dead)", ["destination", "kind", "outcome"], registry=REGISTRY)

#: Gauges read from the database (or a component) when scraped: name -> (help, labels).
GAUGES: dict[str, tuple[str, str, list[str]]] = {
    "jobs": ("interop_jobs", "Jobs in the queue by app and state", ["app", "state"]),
    "writebacks": ("interop_writebacks", "Write-backs by destination and state (dead = the dead-letter list)",
                   ["destination", "state"]),
    "breakers": ("interop_writeback_breaker", "Circuit breaker of each destination: 1 on its current state",
                 ["destination", "state"]),
    "reports": ("interop_reports", "AI reports by app and status", ["app", "status"]),
    "hl7_pending": ("interop_hl7_pending", "HL7 v2 messages accepted (CA) whose FHIR resources are not written yet",
                    []),
    # Models (interop.mlops): drift as the population stability index against the bundle's training reference
    # over each version's recent results; shadow runs' agreement with the active version.
    "model_input_drift": ("interop_model_input_drift", "PSI of a model input feature against its training "
                          "reference (recent results)", ["app", "model_version", "feature"]),
    "model_output_drift": ("interop_model_output_drift", "PSI of a model output (probability, measurement) "
                           "against its training reference (recent results)", ["app", "model_version", "feature"]),
    "shadow_agreement": ("interop_model_shadow_agreement", "Share of shadow runs agreeing with the active "
                         "version's run (both succeeded)", ["app", "active_version", "shadow_version"]),
    "shadow_comparisons": ("interop_model_shadow_comparisons", "Shadow runs compared, by outcome (agree, "
                           "disagree, incomplete)", ["app", "active_version", "shadow_version", "outcome"]),
}


class DbCollector(Collector):
    """The gauges of :data:`GAUGES`, each counted by a function when scraped, so they are right whichever
    process (server or Celery worker) changed the rows."""

    def __init__(self) -> None:
        self.counts: dict[str, Any] = {}  # gauge key -> () -> iterable of (label values, n)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for key, count in list(self.counts.items()):
            name, doc, labels = GAUGES[key]
            g = GaugeMetricFamily(name, doc, labels=labels)
            try:
                for values, n in count():
                    g.add_metric(list(values), n)
            except Exception:  # a scrape must not fail because the database is briefly unavailable
                pass
            yield g


_collector = DbCollector()
REGISTRY.register(_collector)


def watch(key: str, count: Any) -> None:
    """Register (or re-point) gauge ``key`` of :data:`GAUGES` to this process's counting function."""
    if key not in GAUGES:
        raise KeyError(key)
    _collector.counts[key] = count


def watch_queue(count: Any) -> None:
    """The job-queue depth: ``count()`` gives (app, state, n) rows."""
    watch("jobs", lambda: (((app, state), n) for app, state, n in count()))


def exposition() -> bytes:
    return generate_latest(REGISTRY)


def fhir_interaction(method: str, route: str) -> str:
    """The FHIR interaction (http.html) of a request to ``route`` (the router's path template)."""
    parts = [p for p in route.split("/") if p]
    tail = parts[1:] if parts and parts[0] == "fhir" else parts
    if not tail:
        return "transaction" if method == "POST" else "capabilities"
    if tail == ["metadata"]:
        return "capabilities"
    if len(tail) == 1:
        return {"GET": "search-type", "POST": "create", "PUT": "conditional-update"}.get(method, method.lower())
    if tail[-1] == "_search":
        return "search-type"
    if tail[-1] == "_history":
        return "history-instance"
    if len(tail) >= 4 and tail[-2] == "_history":
        return "vread"
    return {"GET": "read", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}.get(method, method.lower())
