"""Soak (issue 7): a few thousand DICOM instances and HL7 v2 messages through the whole pipeline on loopback,
bounded in time, with the server's memory, file handles and threads flat.

One ``interop serve`` (SQLite, local executor, the chest X-ray rule). Four rounds, each: 500 CT instances in
ten studies over one association (C-STORE; no rule fires on CT), 250 ORU^R01 metabolic panels over four MLLP
connections (each 8 Observations, a DiagnosticReport, Patient and order in the FHIR store; every message must
be answered CA and then applied), and one chest radiograph that goes the whole way: ready study,
``cxr_triage`` job, report, SR/heat-map write-back to the node's own store and FHIR facade. After each round
the node is let go quiet (every study ready, every HL7 message applied, every job ended, every write-back
sent) and its process is measured. The first round warms up (the app process, caches, connection pools); from
the second round on, open file descriptors and threads must not grow, and the least resident size of the later
rounds may not exceed that of the earlier ones by more than 30 MB (each round's reading varies with what the
allocator keeps of the last result's images; a leak raises the floor), and the node stays under 1 GB.
Sizes: ``INTEROP_SOAK_ROUNDS``, ``INTEROP_SOAK_INSTANCES`` and ``INTEROP_SOAK_MESSAGES`` (totals over the rounds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from bench import mllp_ingest
from bench.job_latency import fresh_cxr
from tests.conftest import ServerProc
from tests.dicom.peers import association, contexts_for, send_files
from tests.support import wait_for
from tests.test_pipeline import CXR_RULE

ROUNDS = int(os.environ.get("INTEROP_SOAK_ROUNDS", "4"))
INSTANCES = int(os.environ.get("INTEROP_SOAK_INSTANCES", str(500 * ROUNDS)))
MESSAGES = int(os.environ.get("INTEROP_SOAK_MESSAGES", str(250 * ROUNDS)))
PER_STUDY = 50
FINAL_JOB = {"succeeded", "failed", "dead", "cancelled"}


def ct_files(folder: Path, round_: int, n: int) -> list[Path]:
    """``n`` CT_small instances in studies of :data:`PER_STUDY`, fresh UIDs, a patient per study."""
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = []
    study = series = ""
    for i in range(n):
        if i % PER_STUDY == 0:
            study, series = generate_uid(), generate_uid()
        ds = src.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"SOAK-{round_}-{i // PER_STUDY}"
        ds.InstanceNumber = i % PER_STUDY + 1
        path = folder / f"ct-{round_}-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def measure(proc: psutil.Process) -> dict[str, float]:
    """The quiet node's resident size (the least of five readings half a second apart: a background pass may
    be running), open file descriptors and threads."""
    rss = []
    for _ in range(5):
        rss.append(proc.memory_info().rss / 2**20)
        time.sleep(0.5)
    return {"rss_mb": min(rss), "fds": proc.num_fds(), "threads": proc.num_threads()}


@pytest.mark.timeout(900)
def test_soak_instances_and_messages_through_the_pipeline_stay_flat(server_factory: type, tmp_path: Path) -> None:
    srv: ServerProc = server_factory({"INTEROP_ROUTING__RULES": json.dumps([CXR_RULE]),  # type: ignore[call-arg]
                                      "INTEROP_REPORTS__RECOMMENDATIONS": "false"})
    assert srv.proc is not None
    proc = psutil.Process(srv.proc.pid)
    http = srv.client("system/*.cruds")
    per_round_instances, per_round_messages = INSTANCES // ROUNDS, MESSAGES // ROUNDS
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    studies = 0
    for r in range(ROUNDS):
        folder = tmp_path / f"round{r}"
        folder.mkdir()
        files = ct_files(folder, r, per_round_instances)
        (cxr,) = fresh_cxr(folder, r)  # patient BENCH-CXR-<r>
        with association(srv, contexts_for(files[0], cxr), "SOAKSCU") as assoc:
            statuses = send_files(assoc, *files, cxr)
        assert statuses == [0] * (len(files) + 1), f"round {r}: not every instance stored"
        studies += len(files) // PER_STUDY + 1
        # four connections, each sending and waiting for its ACK; raises unless every message is answered CA (the
        # sample asks for an accept acknowledgment: kept, its resources written right after)
        mllp_ingest.measure(srv.mllp_port, f"SOAK{r}", per_round_messages, conns=4)

        def quiet(studies: int = studies, r: int = r) -> bool:
            events = http.get("/api/studies/events", params={"kind": "ready", "limit": 1000}).json()
            if len({e["study_uid"] for e in events}) < studies:
                return False
            jobs = http.get("/api/jobs", params={"app": "cxr_triage", "limit": 1000}).json()
            if len(jobs) < r + 1 or any(j["state"] not in FINAL_JOB for j in jobs):
                return False
            if "interop_hl7_pending 0.0" not in http.get("/metrics").text:
                return False
            return not http.get("/api/writebacks", params={"state": "pending,sending,retrying"}).json()

        wait_for(quiet, 300, f"round {r} to settle")
        jobs = http.get("/api/jobs", params={"app": "cxr_triage", "limit": 1000}).json()
        assert [j["state"] for j in jobs] == ["succeeded"] * (r + 1)
        time.sleep(1.0)  # let the background loops finish their pass
        samples.append(measure(proc))

    # everything that was acknowledged is there
    def studies_of(patients: str) -> list[int]:
        found = http.get("/dicomweb/studies", params={"PatientID": patients, "limit": 1000}).json()
        return [int(s["00201208"]["Value"][0]) for s in found]  # NumberOfStudyRelatedInstances

    ct, cxr = studies_of("SOAK-*"), studies_of("BENCH-CXR-*")
    assert len(ct) + len(cxr) == studies and len(cxr) == ROUNDS
    assert sum(ct) == per_round_instances * ROUNDS
    # each radiograph's study also holds what the node wrote back into it (the SR and the heat-maps)
    assert all(n >= 2 for n in cxr)
    obs = http.get("/fhir/Observation", params={"_count": 0}).json()
    assert obs["total"] >= MESSAGES // ROUNDS * ROUNDS * 8
    reports = http.get("/api/reports", params={"limit": 100}).json()
    assert len(reports) == ROUNDS and all(rep["status"] == "preliminary" for rep in reports)
    assert not http.get("/api/writebacks", params={"state": "dead"}).json()

    elapsed = time.monotonic() - started
    print(f"soak: {INSTANCES} instances, {MESSAGES} messages, {ROUNDS} studies through the apps in "
          f"{elapsed:.0f} s; per round: " + "; ".join(
              f"rss {s['rss_mb']:.0f} MB, fds {s['fds']:.0f}, threads {s['threads']:.0f}" for s in samples))
    # After the warm-up round: no more descriptors or threads; and the memory floor does not rise with the work.
    # A result's write-back builds images of a radiograph's size (~100 MB for a moment), and what the allocator
    # keeps of that varies from one quiet moment to the next; a leak raises the least of the later readings.
    later = samples[1:]
    half = len(later) // 2
    first_floor = min(s["rss_mb"] for s in later[:half])
    last_floor = min(s["rss_mb"] for s in later[half:])
    assert max(s["fds"] for s in later) <= later[0]["fds"] + 4, samples
    assert max(s["threads"] for s in later) <= later[0]["threads"] + 4, samples
    assert last_floor <= first_floor + 30.0, samples
    assert max(s["rss_mb"] for s in samples) < 1024, samples
