"""A node with pending AI results for the worklist tests, and the browser stack that drives it.

One ``interop serve`` for the package: RG1_UNCI (a real chest CR) sent by storescu and run through cxr_triage
(the real pipeline: its report, heat-maps, recommendations), the patient's liver panel by MLLP (the labs the
case shows), and beside it results inserted as rows (tests/ui/seed.py) on copies of the radiograph for other
patients and on a small MR series with a segmentation. People sign in as users of the node's own
authorization server, or hold tokens from ``interop token`` injected as a finished SMART sign-in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.data import get_testdata_file

from tests.conftest import ServerProc
from tests.support import require_tool
from tests.ui.seed import (
    cxr_copies,
    fhir_context,
    mr_series,
    put_arrays,
    seed_reports,
    seed_segmentation_report,
    stored_image,
)

FINDINGS = ["cardiomegaly", "edema", "effusion", "pneumothorax", "consolidation"]
#: Only what the modality ("MODALITY") sends goes to cxr_triage; the copies come from an archive.
CXR_RULE = {"name": "chest", "app": "cxr_triage",
            "study": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"], "calling_aes": ["MODALITY"]}}
PASSWORD = "worklist test password 1"
USERS = {"drjane": ("radiologist", "Jane Doe"), "vic": ("viewer", "Vic Viewer")}


REPO = Path(__file__).resolve().parents[2]
PLAYWRIGHT = REPO / "tests" / "_artifacts" / "npm" / "playwright-core" / "package" / "index.mjs"
CHROMIUM = Path("/usr/bin/chromium")


def browser_missing() -> str | None:
    """Why the browser tests can't run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not CHROMIUM.exists():
        return "Chromium is not installed (tests/run.sh: apt-get install chromium)"
    if not PLAYWRIGHT.exists():
        return f"playwright-core is not fetched ({PLAYWRIGHT.parents[1]}; tests/run.sh fetches it with npm pack)"
    return None


@dataclass
class UiNode:
    srv: ServerProc
    real_report: int
    real_patient: str
    seeded: list[int]
    seeded_patients: list[str]
    mr_report: int
    users: bool
    tokens: dict[str, str] = field(default_factory=dict)
    #: Whether ``interop token`` puts name and role claims in (else tokens carry the subject and scopes only).
    roles: bool = True

    @property
    def base(self) -> str:
        return self.srv.base_url

    def http(self) -> httpx.Client:
        return self.srv.client()

    def person_token(self, subject: str, role: str, name: str,
                     scope: str = "openid fhirUser user/*.rs user/DiagnosticReport.rus user/Observation.rus "
                                  "user/ServiceRequest.rus user/Task.rus") -> str:
        """A person's token from ``interop token``: with name and role claims where it mints them, else the
        subject and scopes only (the page then decides what may be signed from the scopes)."""
        key = f"{subject}|{role}|{scope}"
        if key not in self.tokens:
            base = [sys.executable, "-m", "interop", "token", "--subject", subject, "--scope", scope]
            out = subprocess.run([*base, "--name", name, "--role", role], env=self.srv.env, capture_output=True,
                                 text=True)
            if out.returncode != 0:
                self.roles = False
                out = subprocess.run(base, env=self.srv.env, capture_output=True, text=True, check=True)
            self.tokens[key] = out.stdout.strip()
        return self.tokens[key]


def storescu(port: int, calling_ae: str, *files: Path | str) -> None:
    subprocess.run([require_tool("storescu"), "-aet", calling_ae, "-aec", "INTEROP", "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})


def liver_panel(mrn: str, control_id: str) -> str:
    from tests.test_pipeline import liver_panel as panel

    return panel(control_id, mrn, dt.datetime.now(dt.UTC) - dt.timedelta(hours=5))


def wait_report(http: httpx.Client, study_uid: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = http.get("/api/reports", params={"study_uid": study_uid}).json()
        if rows and rows[0]["status"] == "preliminary":
            return rows[0]  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"no preliminary report for {study_uid}: {http.get('/api/jobs').json()}")


def _add_users(srv: ServerProc) -> bool:
    for name, (role, display) in USERS.items():
        out = subprocess.run([sys.executable, "-m", "interop", "user", "add", name, "--role", role, "--display-name",
                              display, "--password-stdin"], env=srv.env, input=PASSWORD + "\n", capture_output=True,
                             text=True)
        if out.returncode != 0:
            return False
    return True


@pytest.fixture(scope="package")
def ui_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiNode]:
    require_tool("storescu")
    root = tmp_path_factory.mktemp("ui")
    srv = ServerProc(data_dir=root / "node", extra_env={
        "INTEROP_ROUTING__RULES": json.dumps([CXR_RULE]),
        # The real result is stat: its effusion (p ~ 1.0 on RG1_UNCI) is critical here.
        "INTEROP_REPORTS__CRITICAL": json.dumps({"effusion": 0.5}),
    })
    srv.start()
    try:
        cxr = str(get_testdata_file("RG1_UNCI.dcm"))
        real_image = stored_image(cxr)
        storescu(srv.dicom_port, "MODALITY", cxr)
        # The patient's labs, by HL7 v2 from the LIS.
        hl7 = root / "liver.hl7"
        hl7.write_text(liver_panel(real_image.patient_id, "UI-LAB-1"), newline="")
        mllp_send = shutil.which("mllp_send", path=str(Path(sys.executable).parent)) or require_tool("mllp_send")
        subprocess.run([mllp_send, "--loose", "-f", str(hl7), "-p", str(srv.mllp_port), "127.0.0.1"], check=True,
                       capture_output=True, timeout=60)
        # Other patients' results, inserted; on their own radiographs (sent by an archive: not routed).
        folder = root / "dicom"
        folder.mkdir()
        files, copies = cxr_copies(4, folder)
        mr_files, mr_images = mr_series(5, folder)
        storescu(srv.dicom_port, "ARCHIVE", *files, *mr_files)
        with srv.client() as http:
            real = wait_report(http, real_image.study_uid)
            arrays = put_arrays(srv.data_dir, real_image.rows, real_image.columns, FINDINGS)
            db_url = f"sqlite:///{srv.data_dir / 'interop.db'}"
            context = fhir_context(http, [*copies, mr_images[0]])
            seeded = seed_reports(db_url, copies, arrays, 12, context, stat_every=5)
            mr = seed_segmentation_report(db_url, srv.data_dir, mr_images, context)
        yield UiNode(srv=srv, real_report=real["id"], real_patient=real_image.patient_id, seeded=seeded,
                     seeded_patients=[c.patient_id for c in copies], mr_report=mr, users=_add_users(srv))
    finally:
        srv.stop()


@pytest.fixture(scope="package")
def browser() -> None:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)


def drive(scenario: str, **config: Any) -> dict[str, Any]:
    """Run a scenario of tests/ui/drive.mjs; what it saw (it failed the test if the page broke)."""
    out = subprocess.run(["node", str(Path(__file__).with_name("drive.mjs")), scenario, json.dumps(config)],
                         capture_output=True, text=True, timeout=240)
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT ")), None)
    assert line is not None, f"drive.mjs {scenario} gave no result (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    assert "error" not in result, f"{scenario}: {result['error']}\nproblems: {result.get('problems')}"
    return result
