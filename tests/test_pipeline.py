"""End to end through a running ``interop serve``: data in by its real wire (storescu, mllp_send), routing,
the job, the MONAI Deploy app run through the SDK in a child process, the stored result through the API."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProc

LAB_RULE = {"name": "liver-labs", "app": "lab_severity", "priority": "routine",
            "labs": {"codes": ["1975-2", "1751-7", "6768-6", "1920-8", "777-3", "5902-2"], "within_hours": 168}}


def wait_job(http: httpx.Client, timeout: float = 120, **filters: str) -> dict[str, Any]:
    """The first job matching ``filters`` once it has ended (succeeded, failed, dead or cancelled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = http.get("/api/jobs", params=filters).json()
        if jobs and jobs[0]["state"] in ("succeeded", "failed", "dead", "cancelled"):
            return http.get(f"/api/jobs/{jobs[0]['id']}").json()  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise AssertionError(f"no finished job for {filters} within {timeout} s: {http.get('/api/jobs').json()}")


def liver_panel(control_id: str, mrn: str, when: dt.datetime) -> str:
    """An ORU^R01 with the lab set of a real PBC trial patient (survival::pbc id 1; copper and the findings
    left out: the model imputes them)."""
    ts = when.strftime("%Y%m%d%H%M%S+0000")
    obx = [("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "14.5", "mg/dL"),
           ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "2.6", "g/dL"),
           ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "1718", "U/L"),
           ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "137.95", "U/L"),
           ("777-3", "Platelets [#/volume] in Blood by Automated count", "190", "10*3/uL"),
           ("5902-2", "Prothrombin time (PT)", "12.2", "s")]
    segs = [f"MSH|^~\\&|LAB_LIS|GENLAB|INTEROP|GENHOSP|{ts}||ORU^R01^ORU_R01|{control_id}|P|2.5.1|||AL|NE",
            f"PID|1||{mrn}^^^GENHOSP^MR||Doe^Jane||19211020|F",
            f"OBR|1|PLC-{control_id}|FIL-{control_id}|24325-3^Hepatic function panel^LN|||{ts}|||||||{ts}"]
    segs += [f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}^^UCUM|||||F|||{ts}"
             for i, (code, name, value, unit) in enumerate(obx, 1)]
    return "\r".join(segs) + "\r"


def mllp_send(port: int, message: str, tmp: Path) -> str:
    path = tmp / "msg.hl7"
    path.write_bytes(message.encode())
    exe = Path(sys.executable).with_name("mllp_send")
    out = subprocess.run([str(exe), "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"],
                         capture_output=True, timeout=60, check=True)
    return out.stdout.decode()


def test_lab_set_by_hl7_runs_lab_severity_once(server_factory: Any, tmp_path: Path) -> None:
    srv: ServerProc = server_factory({"INTEROP_ROUTING__RULES": json.dumps([LAB_RULE])})
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ack = mllp_send(srv.mllp_port, liver_panel("PBC-1", "MRN-PBC-1", now), tmp_path)
    assert "MSA|AA|PBC-1" in ack
    with srv.client() as http:
        job = wait_job(http, app="lab_severity")
        assert job["state"] == "succeeded", job
        assert job["trigger"] == "labs" and job["rule"] == "liver-labs"
        assert job["patient_id"] == "MRN-PBC-1"
        result = job["result"]
        assert result["model"]["name"] == "lab_severity_pbc_stage"
        assert result["model"]["version"] == job["model_version"]
        assert result["notice"] == "demonstration model, not for clinical use"
        [cls] = result["classifications"]
        assert cls["name"] == "pbc_histologic_stage"
        assert abs(sum(cls["probabilities"].values()) - 1) < 1e-6
        assert len(result["inputs"]["observations"]) == 6
        # The same message again (a resend) and the same lab set asked for by hand: still one job.
        assert "MSA|AA|PBC-1" in mllp_send(srv.mllp_port, liver_panel("PBC-1", "MRN-PBC-1", now), tmp_path)
        patient = job["inputs"]["patient"]
        again = http.post("/api/jobs", json={"app": "lab_severity", "patient": patient})
        assert again.status_code == 200 and again.json()["id"] == job["id"]
        time.sleep(2)
        assert len(http.get("/api/jobs").json()) == 1
