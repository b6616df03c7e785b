"""QIDO-RS against a running node loaded with real studies (PS3.18 §10.6)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.conftest import ServerProc
from tests.dicomweb.conftest import client


@pytest.fixture(scope="module")
def http(loaded: ServerProc) -> httpx.Client:
    c = loaded.client()
    c.base_url = httpx.URL(loaded.dicomweb_url + "/")
    return c


def _uids(results: list[dict], tag: str = "0020000D") -> set[str]:  # type: ignore[type-arg]
    return {r[tag]["Value"][0] for r in results}


def test_qido_counts_match_what_was_stored(loaded: ServerProc, dicomdir_all: list[Path]) -> None:
    datasets = [dcmread(p, stop_before_pixels=True) for p in dicomdir_all]
    series: dict[str, set[str]] = defaultdict(set)
    for ds in datasets:
        series[ds.StudyInstanceUID].add(ds.SeriesInstanceUID)
    qido = client(loaded)
    for patient in {ds.PatientID for ds in datasets}:
        studies = qido.search_for_studies(search_filters={"PatientID": patient})
        expected = {ds.StudyInstanceUID for ds in datasets if ds.PatientID == patient}
        assert _uids(studies) == expected
        for s in studies:
            uid = s["0020000D"]["Value"][0]
            assert s["00201206"]["Value"] == [len(series[uid])]
            assert s["00201208"]["Value"] == [sum(ds.StudyInstanceUID == uid for ds in datasets)]
            found = qido.search_for_series(study_instance_uid=uid)
            assert _uids(found, "0020000E") == series[uid]
    by_uid = {ds.SOPInstanceUID for ds in datasets}
    assert by_uid <= _uids(qido.search_for_instances(), "00080018")


def test_qido_readme_patient_query(http: httpx.Client) -> None:
    r = http.get("studies", params={"PatientID": "77654033"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom+json"
    studies = r.json()
    assert len(studies) == 2
    assert all(s["00100020"]["Value"] == ["77654033"] for s in studies)


def test_qido_retrieve_url_points_at_the_resource(http: httpx.Client, loaded: ServerProc) -> None:
    series = http.get("series", params={"Modality": "CR"}).json()[0]
    url = series["00081190"]["Value"][0]
    study, series_uid = series["0020000D"]["Value"][0], series["0020000E"]["Value"][0]
    assert url == f"{loaded.dicomweb_url}/studies/{study}/series/{series_uid}"
    assert http.get(url + "/metadata").status_code == 200


def test_qido_study_date_range(http: httpx.Client) -> None:
    inside = http.get("studies", params={"StudyDate": "20010101-20030505"}).json()
    assert {s["00080020"]["Value"][0] for s in inside} == {"20010101", "20030505"}
    open_start = http.get("studies", params={"StudyDate": "-19951231"}).json()
    assert {s["00080020"]["Value"][0] for s in open_start} == {"19950903"}
    open_end = http.get("studies", params={"StudyDate": "20030505-"}).json()
    assert all(s["00080020"]["Value"][0] >= "20030505" for s in open_end) and open_end
    assert http.get("studies", params={"StudyDate": "19990101-19991231"}).json() == []


def test_qido_patient_name_fuzzy_and_wildcard(http: httpx.Client) -> None:
    exact = http.get("studies", params={"PatientName": "Doe^Peter"}).json()
    assert exact and all(s["00100020"]["Value"] == ["98890234"] for s in exact)
    assert http.get("studies", params={"PatientName": "peter"}).json() == []
    fuzzy = http.get("studies", params={"PatientName": "pet", "fuzzymatching": "true"}).json()
    assert _uids(fuzzy) == _uids(exact)
    wild = http.get("studies", params={"PatientName": "Doe*"}).json()
    assert {s["00100020"]["Value"][0] for s in wild} == {"77654033", "98890234"}


def test_qido_modalities_in_study(http: httpx.Client) -> None:
    cr = http.get("studies", params={"ModalitiesInStudy": "CR"}).json()
    assert len(cr) == 1 and cr[0]["00080061"]["Value"] == ["CR"]
    either = http.get("studies", params={"ModalitiesInStudy": "CR,NM"}).json()
    assert {m for s in either for m in s["00080061"]["Value"]} == {"CR", "NM"}


def test_qido_uid_list_and_series_matching(http: httpx.Client) -> None:
    all_studies = http.get("studies").json()
    two = sorted(_uids(all_studies))[:2]
    assert _uids(http.get("studies", params={"StudyInstanceUID": ",".join(two)}).json()) == set(two)
    mr_series = http.get("series", params={"Modality": "MR", "PatientID": "98890234"}).json()
    assert mr_series and all(s["00080060"]["Value"] == ["MR"] for s in mr_series)


def test_qido_limit_and_offset_page_through_all(http: httpx.Client) -> None:
    everything = [i["00080018"]["Value"][0] for i in http.get("instances").json()]
    pages: list[str] = []
    for offset in range(0, len(everything), 7):
        page = http.get("instances", params={"limit": 7, "offset": offset}).json()
        assert len(page) <= 7
        pages += [i["00080018"]["Value"][0] for i in page]
    assert pages == everything


def test_qido_includefield_reads_attributes_not_indexed(http: httpx.Client, dicomdir_study: list[Path]) -> None:
    ds = dcmread(dicomdir_study[0], stop_before_pixels=True)
    assert "Manufacturer" in ds
    r = http.get(f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances",
                 params={"SOPInstanceUID": ds.SOPInstanceUID, "includefield": "Manufacturer,00180015"})
    (item,) = r.json()
    assert item["00080070"]["Value"] == [ds.Manufacturer]
    plain = http.get(f"studies/{ds.StudyInstanceUID}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
    assert "00080070" not in plain[0]
    absent = http.get("studies", params={"StudyInstanceUID": ds.StudyInstanceUID, "includefield": "00400100"})
    assert absent.status_code == 200 and "00400100" not in absent.json()[0]
    every = http.get("studies", params={"StudyInstanceUID": ds.StudyInstanceUID, "includefield": "all"}).json()
    assert "0020000D" in every[0]


def test_qido_unknown_or_unsupported_attribute_is_400(http: httpx.Client) -> None:
    for params in ({"NoSuchKeyword": "x"}, {"InstitutionName": "x"}, {"limit": "many"}, {"SOPInstanceUID": "1.2"}):
        r = http.get("studies", params=params)
        assert r.status_code == 400, params
        assert r.json()["resourceType"] == "OperationOutcome"


def test_qido_no_match_is_200_with_empty_array(http: httpx.Client) -> None:
    r = http.get("studies", params={"PatientID": "nobody"})
    assert (r.status_code, r.json()) == (200, [])
    assert http.get("studies/1.2.3.4/series").json() == []


def test_qido_xml_only_accept_is_406(http: httpx.Client) -> None:
    r = http.get("studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert r.status_code == 406
