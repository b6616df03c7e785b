"""Observability (issue 7): structured logs with one correlation id per study, and the metrics the issue lists.

Unit tests of interop.logs and the pure helpers, then one running node driven by its real peers (storescu,
python-hl7's ``mllp_send``, STOW-RS and the HTTP APIs) whose JSON log lines are read back: every step of a
study's way (association, readiness, routing, the job, the report, each write-back, the sign-off) logs under
the study's id, a lab-driven job under its HL7 message's id, and no line names the patient or a UID."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.data import get_testdata_file

from interop import logs
from interop.assembly import ready_latency
from interop.dicom.listener import reject_reason
from tests.api.test_jobs_api import CT_RULE, probe_env
from tests.api.test_metrics import value
from tests.conftest import ServerProc
from tests.hl7v2.support import oru
from tests.jobs.conftest import PROBE_APPS, probe_bundle
from tests.support import require_tool, wait_for
from tests.test_pipeline import mllp_send, wait_job

# -- interop.logs ---------------------------------------------------------------------------------------------


def test_study_id_is_stable_one_way_and_distinct() -> None:
    uid = "1.2.840.113619.2.55.3.604688119.971.1"
    assert logs.study_id(uid) == logs.study_id(uid) == logs.study_id(f" {uid} ")
    assert logs.study_id(uid) != logs.study_id(uid + "0")
    assert logs.study_id(uid).startswith("s-") and len(logs.study_id(uid)) == 18
    assert uid not in logs.study_id(uid) and "113619" not in logs.study_id(uid)
    assert logs.hl7_id("LIS", "LAB", "1") != logs.hl7_id("LIS", "LAB1", "")  # the parts can't run together
    assert logs.hl7_id("LIS", "LAB", "1").startswith("m-") and logs.job_id("k").startswith("j-")


def test_accept_takes_plain_tokens_only() -> None:
    assert logs.accept("req-42") == "req-42"
    assert logs.accept(" 0b7f2c1e-7c3a-4a8e-9a64-2f0c3e7b9d11 ") == "0b7f2c1e-7c3a-4a8e-9a64-2f0c3e7b9d11"
    for bad in (None, "", "a b", "x\ny", '"quoted"', "-leading", "x" * 129, "ünicode"):
        assert logs.accept(bad) is None, bad


def test_correlated_nests_and_restores() -> None:
    assert logs.current() is None
    with logs.correlated("s-1"):
        with logs.correlated(None):  # None keeps the enclosing id
            assert logs.current() == "s-1"
        with logs.correlated("j-2"):
            assert logs.current() == "j-2"
        assert logs.current() == "s-1"
    assert logs.current() is None


def test_of_inputs_reads_the_stored_json_and_dicts() -> None:
    stored = json.dumps({"sop_instance_uids": ["1.2"] * 3000, "correlation_id": "s-abc"}, sort_keys=True)
    assert logs.of_inputs(stored) == "s-abc"
    unsorted = json.dumps({"sop_instance_uids": ["1.2"] * 100, "correlation_id": "s-abc"})
    assert logs.of_inputs(unsorted) == "s-abc"
    assert logs.of_inputs({"correlation_id": "m-1"}) == "m-1"
    assert logs.of_inputs('{"patient": "Patient/1"}') is None
    assert logs.of_inputs("not json") is None and logs.of_inputs(None) is None


def _capture(fmt: str) -> tuple[io.StringIO, logging.Handler]:
    buf = io.StringIO()
    return buf, logs.configure(fmt, "INFO", buf)


def test_json_lines_carry_the_id_extras_and_exception() -> None:
    buf, handler = _capture("json")
    try:
        log = logging.getLogger("interop.test")
        with logs.correlated("s-0123456789abcdef"):
            log.info("stored %d", 3, extra={"association": "a-1"})
            try:
                raise ValueError("bad")
            except ValueError:
                log.exception("failed")
        log.warning("no id here")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second, third = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first["message"] == "stored 3" and first["level"] == "INFO" and first["logger"] == "interop.test"
    assert first["correlation_id"] == "s-0123456789abcdef" and first["association"] == "a-1"
    assert dt.datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["correlation_id"] == "s-0123456789abcdef" and "ValueError: bad" in second["exception"]
    assert "correlation_id" not in third


def test_text_lines_name_the_id() -> None:
    buf, handler = _capture("text")
    try:
        with logs.correlated("s-1"):
            logging.getLogger("interop.test").info("ready", extra={"job": 7})
        logging.getLogger("interop.test").info("plain")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = buf.getvalue().splitlines()
    assert first.endswith("INFO interop.test [s-1]: ready job=7")
    assert second.endswith("INFO interop.test: plain")


def test_the_app_child_logs_under_its_job_id(tmp_path: Path) -> None:
    """What interop.jobs.appproc does with the job line's ``logging``: the child's own lines, in threads too,
    and MONAI Deploy's logging.json in the working directory carry the job's id."""
    code = ("import logging, threading, logging.config, json\n"
            "from interop.logs import configure_child\n"
            "configure_child({'format': 'json', 'level': 'INFO', 'correlation_id': 's-child'}, '.')\n"
            "t = threading.Thread(target=lambda: logging.getLogger('app').info('in a thread')); t.start(); t.join()\n"
            "logging.config.dictConfig(json.load(open('logging.json')))\n"
            "logging.getLogger('monai').info('after the SDK set up logging')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [(x["message"], x["correlation_id"]) for x in lines] == [
        ("in a thread", "s-child"), ("after the SDK set up logging", "s-child")]


# -- pure helpers ---------------------------------------------------------------------------------------------


def test_reject_reason_follows_pynetdicom_order() -> None:
    common: dict[str, Any] = dict(own_ae="INTEROP", require_called=False, identity_failed=False, acceptors=1,
                                  maximum=10)
    assert reject_reason("X", "INTEROP", allowed_aes=["PACS"], **common) == "calling-ae-not-recognised"
    assert reject_reason("PACS ", "INTEROP", allowed_aes=["PACS"], **common) == "other"
    assert reject_reason("X", "OTHER", allowed_aes=[], **{**common, "require_called": True}) == \
        "called-ae-not-recognised"
    assert reject_reason("X", "INTEROP", allowed_aes=["PACS"], **{**common, "acceptors": 11}) == \
        "local-limit-exceeded"


def test_ready_latency_from_first_instance_or_reopening() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert ready_latency(t0 + dt.timedelta(seconds=7), t0, None) == 7
    assert ready_latency(t0 + dt.timedelta(seconds=7), t0.replace(tzinfo=None), t0 + dt.timedelta(seconds=5)) == 2
    assert ready_latency(t0, t0 + dt.timedelta(seconds=1), None) == 0


# -- a running node -----------------------------------------------------------------------------------------


def _lab_probe_app(root: Path) -> Path:
    """The probe app again, as an app that reads labs (the job machinery's contract is the same)."""
    app = root / "labprobe"
    app.mkdir(parents=True)
    for f in ("__init__.py", "__main__.py"):
        shutil.copy(PROBE_APPS / "probe" / f, app / f)
    yaml = (PROBE_APPS / "probe" / "app.yaml").read_text()
    for old, new in (("title: probe", "title: labprobe"), ("module: probe", "module: labprobe"),
                     ("input: dicom", "input: labs")):
        yaml = yaml.replace(old, new)
    (app / "app.yaml").write_text(yaml)
    return root


def _records(srv: ServerProc) -> list[dict[str, Any]]:
    assert srv.log_path is not None
    lines = srv.log_path.read_text(errors="replace").splitlines()
    out = []
    for line in lines:
        if line.startswith("interop: data in"):  # the start-up banner (print, not a log line)
            continue
        out.append(json.loads(line))  # every log line is one JSON object
    return out


def _loggers(records: list[dict[str, Any]], cid: str) -> set[str]:
    return {r["logger"] for r in records if r.get("correlation_id") == cid}


def _signer_token(srv: ServerProc) -> str:
    out = subprocess.run([sys.executable, "-m", "interop", "token", "--subject", "jane", "--name", "Jane Doe",
                          "--role", "radiologist", "--scope", "user/*.rs user/DiagnosticReport.cru"],
                         env=srv.env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _storescu(srv: ServerProc, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([require_tool("storescu"), *args, "127.0.0.1", str(srv.dicom_port), "-aec", "INTEROP",
                           str(get_testdata_file(name))], capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})


def test_one_correlation_id_from_association_to_sign_off(server_factory: Any, tmp_path: Path) -> None:
    bundle = probe_bundle(tmp_path / "bundle", probability=0.4)  # no finding present: no heat-map to write
    lab_rule = {"name": "lipids", "app": "labprobe", "labs": {"codes": ["2093-3", "2571-8"], "within_hours": 1e6}}
    env = probe_env(bundle, rules=[CT_RULE, lab_rule],
                    INTEROP_JOBS__APPS_DIRS=json.dumps([str(PROBE_APPS), str(_lab_probe_app(tmp_path / "labapps"))]),
                    INTEROP_JOBS__MODELS=json.dumps({"probe": str(bundle), "labprobe": str(bundle)}),
                    INTEROP_DICOM__ALLOWED_AES='["STORESCU"]', INTEROP_LOGGING__FORMAT="json",
                    INTEROP_REPORTS__RECOMMENDATIONS="false")
    srv: ServerProc = server_factory(env)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    ct_id, mr_id = logs.study_id(ct.StudyInstanceUID), logs.study_id(mr.StudyInstanceUID)
    hl7_id = logs.hl7_id("LAB_LIS", "GENLAB", "OBS-1")

    # DIMSE: an unknown calling AE is rejected, the known one stores the CT (routed to the probe app).
    assert _storescu(srv, "CT_small.dcm", "-aet", "INTRUDER").returncode != 0
    assert _storescu(srv, "CT_small.dcm").returncode == 0
    # STOW-RS with the caller's request id: answered with it and with the study's correlation id.
    with srv.client() as http:
        data = Path(str(get_testdata_file("MR_small.dcm"))).read_bytes()
        body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--B--\r\n"
        r = http.post("/dicomweb/studies", content=body, headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=B', "X-Request-ID": "req-obs-1"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "req-obs-1" and r.headers["x-correlation-id"] == mr_id
        # Any request gets an id back; a malformed one is replaced.
        plain = http.get("/api/apps", headers={"X-Correlation-ID": "bad id"})
        assert plain.headers["x-request-id"].startswith("r-")
        assert plain.headers["x-correlation-id"] == plain.headers["x-request-id"]
    # HL7 v2: a lab set over MLLP queues the lab app under the message's id.
    assert "MSA|AA|OBS-1" in mllp_send(srv.mllp_port, oru("OBS-1").decode(), tmp_path)

    with srv.client() as http:
        job = wait_job(http, app="probe")
        assert job["state"] == "succeeded", job
        assert job["inputs"]["correlation_id"] == ct_id
        assert http.get(f"/api/jobs/{job['id']}").headers["x-correlation-id"] == ct_id
        lab_job = wait_job(http, app="labprobe")
        assert lab_job["state"] == "succeeded" and lab_job["inputs"]["correlation_id"] == hl7_id
        report = wait_for(lambda: [x for x in http.get("/api/reports").json()
                                   if x["job_id"] == job["id"] and x["status"] == "preliminary"],
                          60, "the preliminary report")[0]
        rows = wait_for(lambda: (lambda ws: ws if ws and all(w["state"] in ("sent", "dead") for w in ws) else None)(
            http.get("/api/writebacks", params={"job_id": job["id"]}).json()), 60,
            lambda: str(http.get("/api/writebacks", params={"job_id": job["id"]}).json()))
        assert all(w["state"] == "sent" for w in rows), rows
    signed = httpx.post(f"{srv.base_url}/api/reports/{report['id']}/signoff", json={"action": "accept"},
                        headers={"Authorization": f"Bearer {_signer_token(srv)}"}, timeout=60)
    assert signed.status_code == 200, signed.text
    time.sleep(1.5)  # the sign-off's write-backs

    records = _records(srv)
    study_path = {"interop.dicom.listener", "interop.assembly", "interop.routing.router", "interop.jobs.worker",
                  "interop.reports.service", "interop.writeback.outbox"}
    assert study_path <= _loggers(records, ct_id), _loggers(records, ct_id)
    sign_off = [r for r in records if r.get("correlation_id") == ct_id and "accept by jane" in r["message"]]
    assert sign_off, "the sign-off line carries the study's id"
    delivered = {r["message"].split(": ", 1)[1].split(" of job")[0] for r in records
                 if r.get("correlation_id") == ct_id and r["logger"] == "interop.writeback.outbox"}
    assert {"sr", "fhir"} <= delivered, delivered
    association = [r for r in records if r.get("correlation_id") == ct_id and r["logger"] == "interop.dicom.listener"]
    assert association[0]["association"].startswith("a-")
    stow = [r for r in records if r.get("correlation_id") == mr_id and r["logger"] == "interop.dicomweb.stow"]
    assert stow and stow[0]["request_id"] == "req-obs-1"
    assert "interop.assembly" in _loggers(records, mr_id)
    assert {"interop.hl7v2.messages", "interop.routing.router", "interop.jobs.worker"} <= _loggers(records, hl7_id)

    # No patient data and no UID on any line.
    text = srv.log_path.read_text() if srv.log_path else ""
    for secret in (ct.StudyInstanceUID, ct.SOPInstanceUID, ct.SeriesInstanceUID, str(ct.PatientID),
                   str(ct.PatientName), mr.StudyInstanceUID, str(mr.PatientName), "MRN900001", "Doe^Jane"):
        assert secret not in text, secret

    metrics = httpx.get(f"{srv.base_url}/metrics").text
    assert value(metrics, "interop_dicom_associations_total", outcome="rejected",
                 reason="calling-ae-not-recognised") == 1
    assert value(metrics, "interop_dicom_associations_total", outcome="accepted") == 1
    assert value(metrics, "interop_dicom_associations_active") == 0
    assert value(metrics, "interop_study_ready_seconds_count") >= 2
    assert value(metrics, "interop_study_ready_seconds_sum") >= 2  # each waited out the 1 s quiet period
    assert value(metrics, "interop_hl7_messages_total", message_type="ORU^R01", ack="AA") == 1
    assert value(metrics, "interop_writeback_deliveries_total", destination="local", kind="sr", outcome="sent") >= 1
    assert value(metrics, "interop_job_attempts_total", app="labprobe", model_version="1.0", outcome="succeeded") == 1


def test_log_id_command_names_a_study() -> None:
    out = subprocess.run([sys.executable, "-m", "interop", "log-id", "1.2.3.4"], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")})
    assert out.stdout.strip() == logs.study_id("1.2.3.4")
