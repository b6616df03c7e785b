"""The node end to end: a study sent by DIMSE (dcmtk storescu) is found and retrieved over DICOMweb
(dicomweb-client), and the study becomes ready for routing."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import ServerProc
from tests.dicom.peers import storescu
from tests.dicomweb.conftest import client, with_public_url

pytestmark = pytest.mark.peer


def test_storescu_study_found_by_qido_and_retrieved_by_wado(
    server_factory: type, dicomdir_all: list[Path], tmp_path: Path
) -> None:
    srv: ServerProc = with_public_url(server_factory(start=False)).start()  # type: ignore[operator]
    out = storescu(srv, *dicomdir_all)
    assert out.returncode == 0, out.stderr

    headers = {p: dcmread(p, stop_before_pixels=True) for p in dicomdir_all}
    per_study = Counter(str(h.StudyInstanceUID) for h in headers.values())
    per_series = Counter(str(h.SeriesInstanceUID) for h in headers.values())
    web = client(srv)

    studies = web.search_for_studies()
    assert len(studies) == len(per_study)
    for study in studies:
        uid = study["0020000D"]["Value"][0]
        assert study["00201208"]["Value"] == [per_study[uid]], "NumberOfStudyRelatedInstances"
        for series in web.search_for_series(study_instance_uid=uid):
            series_uid = series["0020000E"]["Value"][0]
            assert series["00201209"]["Value"] == [per_series[series_uid]], "NumberOfSeriesRelatedInstances"
    assert len(web.search_for_instances()) == len(dicomdir_all)
    assert len(web.search_for_studies(search_filters={"PatientID": "77654033"})) == len(
        {str(h.StudyInstanceUID) for h in headers.values() if h.PatientID == "77654033"}
    )

    path, h = next(iter(headers.items()))
    got = web.retrieve_instance(str(h.StudyInstanceUID), str(h.SeriesInstanceUID), str(h.SOPInstanceUID))
    assert got.SOPInstanceUID == h.SOPInstanceUID
    assert got.PatientName == h.PatientName
    assert got.PixelData == dcmread(path).PixelData

    # The association is released: each study becomes ready after the quiet period (1 s in tests).
    deadline = time.monotonic() + 20
    ready: set[str] = set()
    with srv.client() as http:
        while time.monotonic() < deadline and ready != set(per_study):
            ready = {e["study_uid"] for e in http.get("/api/studies/events", params={"kind": "ready"}).json()}
            time.sleep(0.2)
    assert ready == set(per_study)
