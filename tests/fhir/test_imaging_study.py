"""ImagingStudy kept in step with the DICOM store (interop.fhir.imaging_study): the mapping, and a running
server writing it when a study becomes ready, validated against the official R4 JSON schema."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from interop.fhir.imaging_study import InstanceRow, SeriesRow, StudyRow, imaging_study_bundle
from tests.support import require_tool


def test_mapping_patient_conditional_create_and_study_conditional_update() -> None:
    study = StudyRow("1.2.3", "PID1", "Doe^Jane^Q", "19700102", "F", "20261121", "101500", "ACC9", "CHEST",
                     [SeriesRow("1.2.3.1", "CR", 2, "PA", "CHEST", None,
                                [InstanceRow("1.2.3.1.2", "1.2.840.10008.5.1.4.1.1.1", 2),
                                 InstanceRow("1.2.3.1.1", "1.2.840.10008.5.1.4.1.1.1", 1)])])
    bundle = imaging_study_bundle(study, "urn:dicom:patient-id")
    patient, imaging = (e for e in bundle["entry"])
    assert patient["request"] == {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=PID1"}
    assert patient["resource"]["name"] == [{"family": "Doe", "given": ["Jane", "Q"]}]
    assert patient["resource"]["birthDate"] == "1970-01-02" and patient["resource"]["gender"] == "female"
    assert imaging["request"]["url"] == "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3"
    r = imaging["resource"]
    assert r["subject"] == {"reference": patient["fullUrl"]}
    assert (r["numberOfSeries"], r["numberOfInstances"], r["started"]) == (1, 2, "2026-11-21")
    assert [i["uid"] for i in r["series"][0]["instance"]] == ["1.2.3.1.1", "1.2.3.1.2"]
    assert r["series"][0]["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.1"


def test_ready_studies_get_one_imaging_study_each_updated_by_later_instances(
        server: Any, dicomdir_study: list[Path], validators: dict[str, Any]) -> None:
    storescu = require_tool("storescu")

    def send(files: list[Path]) -> None:
        subprocess.run([storescu, "-aec", "INTEROP", "127.0.0.1", str(server.dicom_port), *map(str, files)],
                       check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})

    def imaging_studies(http: Any, n_instances: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = http.get("/fhir/ImagingStudy", params={"_count": "50"}).json()
            found = [e["resource"] for e in got.get("entry", []) if e["resource"]["resourceType"] == "ImagingStudy"]
            if sum(f["numberOfInstances"] for f in found) >= n_instances:
                return found
            time.sleep(0.3)
        raise AssertionError(f"ImagingStudy for {n_instances} instances not written")

    send(dicomdir_study[:-1])
    with server.client() as http:
        imaging_studies(http, len(dicomdir_study) - 1)
        send(dicomdir_study[-1:])
        found = imaging_studies(http, len(dicomdir_study))
        assert sum(f["numberOfInstances"] for f in found) == len(dicomdir_study)
        uids = [i["value"] for f in found for i in f["identifier"] if i.get("system") == "urn:dicom:uid"]
        assert len(uids) == len(set(uids)) == 2  # two studies, one ImagingStudy each
        subjects = {f["subject"]["reference"] for f in found}
        assert len(subjects) == 1  # one Patient for both
        patient = http.get(f"/fhir/{subjects.pop()}").json()
        assert patient["identifier"] == [{"system": "urn:dicom:patient-id", "value": "77654033"}]
        for f in found:
            errors = sorted(validators["ImagingStudy"].iter_errors(f), key=str)
            assert not errors, errors[0].message
