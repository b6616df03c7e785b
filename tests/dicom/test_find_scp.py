"""C-FIND with dcmtk's findscu (PS3.4 Annex C): Study Root and Patient Root, each level, matching kinds.

One node for the module, loaded once with all 31 ``dicomdirtests`` instances (2 patients, 6 studies); the
expected answers are computed from the files themselves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from tests.conftest import ServerProc
from tests.dicom.peers import run_tool, store_responses, storescu

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def headers(dicomdir_all: list[Path]) -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True) for p in dicomdir_all]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, dicomdir_all: list[Path]) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("find") / "node").start()
    try:
        out = storescu(srv, *dicomdir_all)
        assert store_responses(out.stdout + out.stderr) == ["Success"] * len(dicomdir_all), out.stderr
        yield srv
    finally:
        srv.stop()


def findscu(server: ServerProc, tmp_path: Path, model: str, level: str, **keys: str) -> list[Dataset]:
    """Run ``findscu`` and return the responses it extracted (``-X``), one data set each."""
    out_dir = tmp_path / f"rsp-{len(list(tmp_path.glob('rsp-*')))}"
    out_dir.mkdir()
    args = ["findscu", "-v", model, "-aec", "INTEROP", "-X", "-od", str(out_dir), "-k", f"QueryRetrieveLevel={level}"]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v else k]
    proc = run_tool([*args, "127.0.0.1", str(server.dicom_port)], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Received Final Find Response (Success)" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def _values(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]


def _study_uids(headers: list[Dataset], cond: object = None) -> set[str]:
    return {str(h.StudyInstanceUID) for h in headers if cond is None or cond(h)}  # type: ignore[operator]


def test_find_study_root_study_level_returns_values(loaded: ServerProc, headers: list[Dataset],
                                                    tmp_path: Path) -> None:
    mine = [h for h in headers if h.PatientID == "77654033"]
    rsps = findscu(loaded, tmp_path, "-S", "STUDY", PatientID="77654033", PatientName="", StudyInstanceUID="",
                   StudyDate="", ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
                   NumberOfStudyRelatedInstances="")
    assert {str(r.StudyInstanceUID) for r in rsps} == _study_uids(mine)
    for r in rsps:
        in_study = [h for h in mine if h.StudyInstanceUID == r.StudyInstanceUID]
        assert str(r.PatientName) == "Doe^Archibald"
        assert r.StudyDate == in_study[0].StudyDate
        assert set(_values(r.ModalitiesInStudy)) == {h.Modality for h in in_study}
        assert int(r.NumberOfStudyRelatedSeries) == len({h.SeriesInstanceUID for h in in_study})
        assert int(r.NumberOfStudyRelatedInstances) == len(in_study)
        assert r.QueryRetrieveLevel == "STUDY"
        assert r.RetrieveAETitle == "INTEROP"


def test_find_patient_name_wildcard_matches(loaded: ServerProc, headers: list[Dataset], tmp_path: Path) -> None:
    rsps = findscu(loaded, tmp_path, "-S", "STUDY", PatientName="Doe^P*", StudyInstanceUID="")
    assert {str(r.StudyInstanceUID) for r in rsps} == _study_uids(headers, lambda h: h.PatientName == "Doe^Peter")
    rsps = findscu(loaded, tmp_path, "-S", "STUDY", PatientName="D?e*", StudyInstanceUID="")
    assert {str(r.StudyInstanceUID) for r in rsps} == _study_uids(headers)
    assert findscu(loaded, tmp_path, "-S", "STUDY", PatientName="Smith*", StudyInstanceUID="") == []


@pytest.mark.parametrize("date_range", ["20000101-20021231", "-19991231", "20030101-", "20010101"])
def test_find_study_date_range_matches(loaded: ServerProc, headers: list[Dataset], tmp_path: Path,
                                       date_range: str) -> None:
    lo, _, hi = date_range.partition("-") if "-" in date_range else (date_range, "", date_range)
    expected = _study_uids(headers, lambda h: (not lo or h.StudyDate >= lo) and (not hi or h.StudyDate <= hi))
    assert expected, "the range must select something"
    rsps = findscu(loaded, tmp_path, "-S", "STUDY", StudyDate=date_range, StudyInstanceUID="")
    assert {str(r.StudyInstanceUID) for r in rsps} == expected
    assert all(lo <= r.StudyDate <= (hi or "99999999") for r in rsps)


def test_find_series_level_counts_instances(loaded: ServerProc, headers: list[Dataset], tmp_path: Path) -> None:
    study_uid = str(next(h for h in headers if h.Modality == "MR").StudyInstanceUID)
    in_study = [h for h in headers if h.StudyInstanceUID == study_uid]
    per_series: dict[str, list[Dataset]] = defaultdict(list)
    for h in in_study:
        per_series[str(h.SeriesInstanceUID)].append(h)
    rsps = findscu(loaded, tmp_path, "-S", "SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="",
                   Modality="", SeriesNumber="", NumberOfSeriesRelatedInstances="")
    assert {str(r.SeriesInstanceUID) for r in rsps} == set(per_series)
    for r in rsps:
        assert r.Modality == "MR"
        assert int(r.NumberOfSeriesRelatedInstances) == len(per_series[str(r.SeriesInstanceUID)])
        assert str(r.StudyInstanceUID) == study_uid


def test_find_image_level_lists_instances(loaded: ServerProc, headers: list[Dataset], tmp_path: Path) -> None:
    h0 = next(h for h in headers if h.Modality == "CT" and h.PatientID == "77654033")
    rsps = findscu(loaded, tmp_path, "-S", "IMAGE", StudyInstanceUID=str(h0.StudyInstanceUID),
                   SeriesInstanceUID=str(h0.SeriesInstanceUID), SOPInstanceUID="", SOPClassUID="",
                   InstanceNumber="")
    expected = {str(h.SOPInstanceUID): h for h in headers if h.SeriesInstanceUID == h0.SeriesInstanceUID}
    assert {str(r.SOPInstanceUID) for r in rsps} == set(expected)
    for r in rsps:
        assert r.SOPClassUID == expected[str(r.SOPInstanceUID)].SOPClassUID
        assert r.InstanceNumber == expected[str(r.SOPInstanceUID)].InstanceNumber


def test_find_modality_in_study_matches(loaded: ServerProc, headers: list[Dataset], tmp_path: Path) -> None:
    rsps = findscu(loaded, tmp_path, "-S", "STUDY", ModalitiesInStudy="CR", StudyInstanceUID="")
    assert {str(r.StudyInstanceUID) for r in rsps} == _study_uids(headers, lambda h: h.Modality == "CR")


def test_find_patient_root_patient_level_lists_patients(loaded: ServerProc, headers: list[Dataset],
                                                        tmp_path: Path) -> None:
    rsps = findscu(loaded, tmp_path, "-P", "PATIENT", PatientID="", PatientName="",
                   NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="")
    by_id = {str(r.PatientID): r for r in rsps}
    assert set(by_id) == {str(h.PatientID) for h in headers}
    for pid, r in by_id.items():
        mine = [h for h in headers if h.PatientID == pid]
        assert str(r.PatientName) == str(mine[0].PatientName)
        assert int(r.NumberOfPatientRelatedStudies) == len(_study_uids(mine))
        assert int(r.NumberOfPatientRelatedInstances) == len(mine)
        assert r.QueryRetrieveLevel == "PATIENT"


def test_find_patient_root_study_level_within_patient(loaded: ServerProc, headers: list[Dataset],
                                                      tmp_path: Path) -> None:
    rsps = findscu(loaded, tmp_path, "-P", "STUDY", PatientID="98890234", StudyInstanceUID="", StudyDate="")
    assert {str(r.StudyInstanceUID) for r in rsps} == _study_uids(headers, lambda h: h.PatientID == "98890234")


@pytest.mark.parametrize(("model", "level"), [("-S", "FRAME"), ("-S", "PATIENT")])
def test_find_level_outside_model_refused_a900(loaded: ServerProc, model: str, level: str) -> None:
    """Study Root has no PATIENT level (PS3.4 C.6.2): the identifier doesn't match the SOP class."""
    proc = run_tool(["findscu", "-v", model, "-aec", "INTEROP", "-k", f"QueryRetrieveLevel={level}",
                     "-k", "PatientID", "127.0.0.1", str(loaded.dicom_port)], timeout=60)
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in proc.stdout + proc.stderr
