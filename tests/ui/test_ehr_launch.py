"""SMART EHR launch of the worklist, end to end in headless Chromium: a second ``interop serve`` plays the EHR
(its authorization server, a user, the worklist registered as a public client with this node's redirect URI,
a Patient and a launch id for it, CORS for this node's origin); this node trusts the EHR's tokens
(``auth.external``, its JWKS). The EHR opens ``/launch.html?iss=<EHR FHIR base>&launch=<id>``; the reader signs
in at the EHR; the page gets the patient from the token response, reads that Patient from the EHR for its
identifiers and opens that patient's pending results from this node, and only theirs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProc
from tests.ui.conftest import FINDINGS, PASSWORD, drive, storescu
from tests.ui.seed import cxr_copies, fhir_context, put_arrays, seed_reports

pytestmark = pytest.mark.usefixtures("browser")


def cli(srv: ServerProc, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "interop", *args], env=srv.env, input=stdin, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        pytest.skip(f"interop {args[0]} {args[1] if len(args) > 1 else ''} is not available here: {out.stderr[-300:]}")
    return out.stdout.strip()


def test_ehr_launch_opens_the_launch_patients_pending_results(server_factory: Any, tmp_path: Path) -> None:
    from interop.config import AuthSettings

    if "external" not in AuthSettings.model_fields or "server" not in AuthSettings.model_fields:
        pytest.skip("this node has no built-in authorization server or external token issuers (auth.server, "
                    "auth.external) to play the EHR and trust it")
    ehr: ServerProc = server_factory(start=False, name="ehr")
    node: ServerProc = server_factory(start=False, name="node")
    ehr.extra_env.update({"INTEROP_AUTH__SERVER__DEFAULT_CLIENTS": "false",
                          "INTEROP_HTTP__CORS_ORIGINS": json.dumps([node.base_url])})
    node.extra_env["INTEROP_AUTH__EXTERNAL"] = json.dumps([{
        "issuer": ehr.base_url, "jwks_uri": f"{ehr.base_url}/auth/jwks", "audience": [f"{ehr.base_url}/fhir"]}])
    ehr.start()
    node.start()
    # The EHR: the worklist as a public client coming back to this node, a radiologist, the patient, a launch.
    cli(ehr, "client", "add", "interop-worklist", "--public", "--redirect-uri", f"{node.base_url}/")
    cli(ehr, "user", "add", "drjane", "--role", "radiologist", "--display-name", "Jane Doe", "--password-stdin",
        stdin=PASSWORD + "\n")
    folder = tmp_path / "dicom"
    folder.mkdir()
    files, images = cxr_copies(2, folder, prefix="EHRMRN")
    with ehr.client() as http:
        patient = http.post("/fhir/Patient", json={
            "resourceType": "Patient", "name": [{"family": "Launch", "given": ["Lena"]}],
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.2", "value": images[0].patient_id}]})
        assert patient.status_code == 201, patient.text
    launch = cli(ehr, "launch", "--patient", patient.json()["id"])
    # This node: results for the launch patient (two) and for someone else (one).
    storescu(node.dicom_port, "ARCHIVE", *files)
    with node.client() as http:
        context = fhir_context(http, images)
    arrays = put_arrays(node.data_dir, images[0].rows, images[0].columns, FINDINGS)
    db = f"sqlite:///{node.data_dir / 'interop.db'}"
    mine = seed_reports(db, [images[0]], arrays, 2, context, stat_every=0)
    other = seed_reports(db, [images[1]], arrays, 1, context, stat_every=0)

    seen = drive("ehr", base=node.base_url, ehr=ehr.base_url, iss=f"{ehr.base_url}/fhir", launch=launch,
                 user="drjane", password=PASSWORD)
    assert seen["problems"] == [] and seen["banner"] == ""
    authorize = next(u for u in seen["urls"] if u.startswith(f"{ehr.base_url}/auth/authorize?"))
    assert f"launch={launch}" in authorize and "code_challenge_method=S256" in authorize
    assert f"aud={ehr.base_url.replace(':', '%3A').replace('/', '%2F')}%2Ffhir" in authorize
    assert seen["rows"] == [images[0].patient_id] * 2  # only the launch patient's results
    assert seen["state"]["id"] == mine[0]  # the first of them opened
    assert images[0].patient_id in seen["patientFilter"] and "from the EHR" in seen["counts"]
    assert not any(a["disabled"] for a in seen["state"]["actions"])  # a radiologist at the EHR may sign here
    assert other[0] not in (seen["state"]["id"],)
