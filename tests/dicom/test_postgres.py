"""The DIMSE round trip with the index on PostgreSQL (the production database) instead of SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import ServerProc
from tests.dicom.peers import counts, fresh_instance, index, send, store_responses, storescu
from tests.dicom.test_find_scp import findscu
from tests.support import sample_file

pytestmark = pytest.mark.peer


@pytest.fixture
def pg_server(server_factory: type, postgres_url: str) -> ServerProc:
    return server_factory({"INTEROP_DATABASE_URL": postgres_url})  # type: ignore[no-any-return,operator]


def test_storescu_round_trip_on_postgresql(pg_server: ServerProc, dicomdir_all: list[Path], tmp_path: Path) -> None:
    assert not (pg_server.data_dir / "interop.db").exists(), "the index must not fall back to SQLite"
    headers = [dcmread(p, stop_before_pixels=True) for p in dicomdir_all]
    expected = (len({h.StudyInstanceUID for h in headers}), len({h.SeriesInstanceUID for h in headers}),
                len(headers))
    for _ in range(2):  # the second time changes nothing
        out = storescu(pg_server, *dicomdir_all)
        assert store_responses(out.stdout + out.stderr) == ["Success"] * len(dicomdir_all), out.stderr
        assert counts(pg_server) == expected
    assert {r.sop_uid for r in index(pg_server)} == {str(h.SOPInstanceUID) for h in headers}

    rsps = findscu(pg_server, tmp_path, "-S", "STUDY", PatientName="doe^arch*", StudyInstanceUID="",
                   NumberOfStudyRelatedInstances="")
    assert sum(int(r.NumberOfStudyRelatedInstances) for r in rsps) == 7
    assert {str(r.StudyInstanceUID) for r in rsps} == {
        str(h.StudyInstanceUID) for h in headers if h.PatientID == "77654033"
    }

    first = fresh_instance(sample_file("CT_small.dcm"), tmp_path / "dup")
    altered = dcmread(first)
    altered.StudyDescription = "different payload"
    altered.save_as(tmp_path / "altered.dcm")
    assert send(pg_server, first, tmp_path / "altered.dcm") == [0x0000, 0xB006]

    study_uid = str(headers[0].StudyInstanceUID)
    with pg_server.client() as http:
        deadline = time.monotonic() + 10
        while http.get(f"/api/studies/{study_uid}").json()["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ready = [e for e in http.get("/api/studies/events", params={"kind": "ready"}).json()
                 if e["study_uid"] == study_uid]
    assert len(ready) == 1
