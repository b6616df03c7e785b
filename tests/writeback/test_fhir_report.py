"""FHIR result Bundles (interop.writeback.fhir_report): every resource and Bundle passes the official R4 JSON
schema and the profiles it claims, and our own FHIR store takes them: the preliminary Bundle twice stores one
copy, the sign-off Bundles move the report through final / amended / cancelled."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_profiles import check_claimed_profiles, profile_url
from interop.fhir import FhirStore
from interop.fhir.imaging_study import InstanceRow, SeriesRow, StudyRow, imaging_study_bundle
from interop.fhir.registry import RESOURCES
from interop.hl7v2.mapping import MappingOptions, to_bundle
from interop.hl7v2.parse import parse
from interop.recommend.model import Recommendation
from interop.store.db import Database
from interop.writeback.fhir_report import (
    IDENTIFIER_SYSTEM,
    MODEL_SYSTEM,
    ReportInput,
    Verdict,
    identifiers,
    preliminary_bundle,
    report_status_after,
    search_query,
    signoff_bundle,
)
from operators.app_result import AppResult, Coding
from tests.fhir.test_examples import SCHEMA, _need

REPO = Path(__file__).resolve().parents[2]
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
NOTICE = "demonstration model, not for clinical use"
ISSUED = dt.datetime(2026, 11, 21, 10, 30, tzinfo=dt.UTC)
KEY_CXR = "a1" * 32
KEY_MR = "b2" * 32
KEY_LAB = "c3" * 32
TYPES = ("Bundle", "Patient", "ImagingStudy", "ServiceRequest", "Observation", "Device", "DiagnosticReport",
         "Provenance", "Task", "Communication")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The official R4 JSON schema, one validator per type these Bundles hold (and Bundle itself)."""
    from jsonschema import Draft6Validator

    definitions = json.loads(_need(SCHEMA).read_text())["definitions"]
    return {t: Draft6Validator({"$ref": f"#/definitions/{t}", "definitions": definitions}) for t in TYPES}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FhirStore]:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.migrate()
    yield FhirStore(db)
    db.dispose()


@pytest.fixture
def ehr(tmp_path: Path) -> Iterator[FhirStore]:
    """A second, empty store: an EHR that has never seen the node's patient, study or labs."""
    db = Database(f"sqlite:///{tmp_path / 'ehr.db'}")
    db.migrate()
    yield FhirStore(db)
    db.dispose()


# -- realistic inputs ---------------------------------------------------------------------------------------


def _model(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "path": f"/models/{name}", "sha256": "9f" * 32,
            "demonstration": True, "notice": NOTICE}


def cxr_result(probabilities: dict[str, float] | None = None) -> AppResult:
    """cxr_triage's five findings with the thresholds of its demonstration bundle."""
    meta = json.loads((REPO / "apps" / "cxr_triage" / "model" / "configs" / "metadata.json").read_text())
    probs = probabilities or {"cardiomegaly": 0.91, "edema": 0.81, "effusion": 0.12, "pneumothorax": 0.03,
                              "consolidation": 0.05}
    sop = "1.2.826.0.1.3680043.8.498.1"
    return AppResult.model_validate({
        "app": {"name": "cxr_triage", "version": "0.1.0"}, "model": _model("cxr_demo", "0.1.0"), "notice": NOTICE,
        "inputs": {"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.1", "sop_instance_uids": [sop],
                   "patient_id": "PID1"},
        "findings": [{"name": f["name"], "code": f["code"], "probability": probs[f["name"]],
                      "threshold": f["threshold"], "present": probs[f["name"]] >= f["threshold"],
                      "heatmap": f"heatmap_{f['name']}.npy", "sop_instance_uid": sop} for f in meta["findings"]],
        "summary": "cardiomegaly, edema",
    })


def mr_result() -> AppResult:
    volume = {"system": SNOMED, "code": "118565006", "display": "Volume"}
    sites = [("Hippocampus", "5366008"), ("Thalamus", "42695009")]
    sides = [("Left", "7771000"), ("Right", "24028007")]
    measurements = [{"name": f"{side} {site.lower()} volume", "code": volume, "value": round(3.9 + i * 0.4, 2),
                     "unit": "mL", "finding_site": {"system": SNOMED, "code": sc, "display": site},
                     "laterality": {"system": SNOMED, "code": lc, "display": side}, "segment_number": i + 1}
                    for i, ((site, sc), (side, lc)) in enumerate((s, d) for s in sites for d in sides)]
    measurements.append({"name": "Brain stem volume", "code": volume, "value": 24.6, "unit": "mL",
                         "finding_site": {"system": SNOMED, "code": "15926001", "display": "Brainstem"}})
    return AppResult.model_validate({
        "app": {"name": "mr_segmentation", "version": "0.1.0"}, "model": _model("mr_demo", "0.1.0"),
        "notice": NOTICE, "inputs": {"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.1"},
        "measurements": measurements,
    })


def lab_result(observation_refs: list[str]) -> AppResult:
    meta = json.loads((REPO / "apps" / "lab_severity" / "model" / "configs" / "metadata.json").read_text())
    return AppResult.model_validate({
        "app": {"name": "lab_severity", "version": "1.0.0"}, "model": _model("lab_severity_pbc_stage", "1.0.0"),
        "notice": NOTICE, "inputs": {"patient_id": "MRN-PBC-1", "observations": observation_refs},
        "classifications": [{
            "name": meta["classification"]["name"], "code": meta["classification"]["code"], "predicted": "4",
            "probabilities": {"1": 0.02, "2": 0.08, "3": 0.25, "4": 0.65},
            "contributions": [{"feature": "bilirubin", "value": 14.5, "contribution": 0.82},
                              {"feature": "albumin", "value": 2.6, "contribution": 0.41},
                              {"feature": "copper", "value": None, "contribution": 0.03}]}],
    })


def seed_study(store: FhirStore) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The node's Patient and ImagingStudy as study assembly writes them, and an order for the study."""
    study = StudyRow("1.2.3", "PID1", "Doe^Jane", "19700102", "F", "20261121", "101500", "ACC9", "CHEST",
                     [SeriesRow("1.2.3.1", "CR", 1, "PA", "CHEST", None,
                                [InstanceRow("1.2.826.0.1.3680043.8.498.1", "1.2.840.10008.5.1.4.1.1.1", 1)])])
    store.transaction(imaging_study_bundle(study, "urn:dicom:patient-id"))
    [patient] = resources(store, "Patient")
    [imaging] = resources(store, "ImagingStudy")
    order = store.create({
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "identifier": [{"system": "urn:hl7v2:GENHOSP_OE", "value": "ORD-1",
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "PLAC"}]}}],
        "code": {"coding": [{"system": LOINC, "code": "36643-5", "display": "XR Chest 2V"}]},
        "subject": {"reference": f"Patient/{patient['id']}"},
        "requester": {"reference": "Practitioner/dr-osei"},  # not in the Bundle: dropped, never dangling
    }).resource
    return patient, imaging, order


def liver_panel() -> bytes:
    """An ORU^R01 with a PBC patient's liver panel (as tests/test_pipeline.py sends it)."""
    ts = "20261120071500+0000"
    obx = [("1975-2", "Bilirubin.total", "14.5", "mg/dL"), ("1751-7", "Albumin", "2.6", "g/dL"),
           ("6768-6", "Alkaline phosphatase", "1718", "U/L"), ("1920-8", "Aspartate aminotransferase", "137.95", "U/L"),
           ("777-3", "Platelets", "190", "10*3/uL"), ("5902-2", "Prothrombin time (PT)", "12.2", "s")]
    segs = [f"MSH|^~\\&|LAB_LIS|GENLAB|INTEROP|GENHOSP|{ts}||ORU^R01^ORU_R01|PBC-1|P|2.5.1|||AL|NE",
            "PID|1||MRN-PBC-1^^^GENHOSP^MR||Doe^Jane||19211020|F",
            f"OBR|1|PLC-PBC-1^GENHOSP_OE|FIL-PBC-1^GENLAB|24325-3^Hepatic function panel^LN|||{ts}|||||||{ts}"]
    segs += [f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}^^UCUM|||||F|||{ts}"
             for i, (code, name, value, unit) in enumerate(obx, 1)]
    return ("\r".join(segs) + "\r").encode()


def seed_labs(store: FhirStore) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    store.transaction(to_bundle(parse(liver_panel()), MappingOptions()).bundle)
    [patient] = resources(store, "Patient")
    [order] = resources(store, "ServiceRequest")
    return patient, order, resources(store, "Observation")


def recs(*items: tuple[str, str, str, str, str]) -> list[Recommendation]:
    out = []
    for finding, snippet, system, code, display in items:
        out.append(Recommendation(
            kind="referral" if "Referral" in display else "test",
            code=Coding(system=system, code=code, display=display), text=f"Consider {display.lower()}.",
            snippet_id=f"guidance/x.md#{snippet}",
            source="Demonstration guidance", finding=finding, score=0.8))
    return out


def cxr_input(store: FhirStore, *, critical: list[str] | None = None,
              probabilities: dict[str, float] | None = None) -> ReportInput:
    patient, imaging, order = seed_study(store)
    return ReportInput(
        key=KEY_CXR, job_id=7, result=cxr_result(probabilities), patient=patient, imaging_study=imaging,
        order=order, observations=[],
        recommendations=recs(("cardiomegaly", "cxr-cardiomegaly-echo", LOINC, "34552-0", "Cardiac 2D echo panel"),
                             ("edema", "cxr-cardiomegaly-echo", LOINC, "34552-0", "Cardiac 2D echo panel"),
                             ("edema", "cxr-edema-cardiology", SNOMED, "308471005", "Referral to cardiologist")),
        critical=critical or [], text="Chest radiograph, AI triage (preliminary).\nCardiomegaly: present.\n",
        issued=ISSUED)


def lab_input(store: FhirStore) -> ReportInput:
    patient, order, observations = seed_labs(store)
    refs = [f"Observation/{o['id']}/_history/{o['meta']['versionId']}" for o in observations]
    return ReportInput(
        key=KEY_LAB, job_id=9, result=lab_result(refs), patient=patient, imaging_study=None, order=order,
        observations=observations,
        recommendations=recs(("pbc_histologic_stage=4", "pbc-hepatology-referral", SNOMED, "308476000",
                              "Referral to gastroenterologist")),
        critical=[], text="PBC histologic stage predicted from labs: 4 (p=0.65).\n", issued=ISSUED)


# -- helpers ------------------------------------------------------------------------------------------------


def resources(store: FhirStore, type_: str, *params: tuple[str, str]) -> list[dict[str, Any]]:
    got = store.search(type_, [*params, ("_count", "100")])
    return [e["resource"] for e in got["entry"] if e["search"]["mode"] == "match"]


def counts(store: FhirStore) -> dict[str, int]:
    return {t: store.search(t, [("_count", "0")])["total"] for t in TYPES[1:] if t in RESOURCES}


def by_identifier(store: FhirStore, type_: str, value: str) -> dict[str, Any]:
    [found] = resources(store, type_, ("identifier", f"{IDENTIFIER_SYSTEM}|{value}"))
    return found


def of_type(bundle: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == type_]


def schema_errors(schema: dict[str, Any], bundle: dict[str, Any]) -> list[str]:
    errors = [f"Bundle: {e.message[:300]}" for e in schema["Bundle"].iter_errors(bundle)]
    for e in bundle["entry"]:
        res = e["resource"]
        errors += [f"{res['resourceType']}/{'/'.join(map(str, err.path))}: {err.message[:300]}"
                   for err in schema[res["resourceType"]].iter_errors(res)]
    return errors


def check_bundle(schema: dict[str, Any], bundle: dict[str, Any]) -> None:
    """R4 schema, our profiles, and every reference to a resource the Bundle writes names its entry."""
    assert schema_errors(schema, bundle) == []
    for e in bundle["entry"]:
        assert check_claimed_profiles(e["resource"]) == [], e["resource"]["resourceType"]
    urls = {e["fullUrl"] for e in bundle["entry"]}
    refs = [r for e in bundle["entry"] for r in _references(e["resource"])]
    assert refs and all(r in urls for r in refs if r.startswith("urn:")), sorted(set(refs) - urls)
    assert not [r for r in refs if not r.startswith("urn:uuid:")], "a reference that only resolves at the node"


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _references(v)
    elif isinstance(node, list):
        for v in node:
            yield from _references(v)


def verdict(action: str, previous: str = "preliminary", **kw: Any) -> Verdict:
    return Verdict(action=action, sequence=kw.pop("sequence", 1), reader_id="u-42", reader_name="Dr. Ada Osei",  # type: ignore[arg-type]
                   at=ISSUED + dt.timedelta(hours=1), previous_status=previous, **kw)


# -- the preliminary Bundle ---------------------------------------------------------------------------------


def test_preliminary_bundle_is_valid_r4_profiled_and_conditional(store: FhirStore, schema: dict[str, Any]) -> None:
    inp = cxr_input(store)
    given = copy.deepcopy((inp.patient, inp.imaging_study, inp.order))
    bundle = preliminary_bundle(inp)
    check_bundle(schema, bundle)
    assert bundle == preliminary_bundle(inp)  # deterministic: the same post every time
    assert (inp.patient, inp.imaging_study, inp.order) == given  # the node's resources are copied, not changed
    for e in bundle["entry"]:
        req = e["request"]
        if e["resource"]["resourceType"] == "Provenance":  # no identifier in R4: update-as-create by id
            assert req == {"method": "PUT", "url": f"Provenance/{identifiers(KEY_CXR).provenance_id}"}
        else:
            assert req["method"] == "POST" and req["ifNoneExist"].startswith("identifier=")
        assert "id" not in e["resource"] or e["resource"]["resourceType"] == "Provenance"
        assert "versionId" not in (e["resource"].get("meta") or {})

    [report] = of_type(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary" and report["meta"]["profile"] == [profile_url("ai-diagnostic-report")]
    assert report["code"]["coding"][0]["code"] == "18748-4" and report["category"][0]["coding"][0]["code"] == "RAD"
    assert [c["coding"][0]["code"] for c in report["conclusionCode"]] == ["8186001", "19242006"]
    assert NOTICE in report["conclusion"].lower() and "awaiting physician sign-off" in report["conclusion"]
    assert base64.b64decode(report["presentedForm"][0]["data"]).decode() == inp.text
    assert NOTICE in report["presentedForm"][0]["title"]
    assert len(report["result"]) == 5 and report["basedOn"] and report["imagingStudy"]

    findings = of_type(bundle, "Observation")
    assert len(findings) == 5 and {o["status"] for o in findings} == {"preliminary"}
    cardio = next(o for o in findings if o["code"]["coding"][0]["code"] == "8186001")
    assert cardio["valueCodeableConcept"]["coding"][0] == {"system": SNOMED, "code": "52101004", "display": "Present"}
    assert cardio["component"][0]["valueQuantity"] == {"value": 0.91, "unit": "probability",
                                                      "system": "http://unitsofmeasure.org", "code": "1"}
    assert cardio["component"][1]["valueQuantity"]["value"] == 0.379
    absent = next(o for o in findings if o["code"]["coding"][0]["code"] == "36118008")
    assert absent["valueCodeableConcept"]["coding"][0]["code"] == "272519000"
    assert cardio["derivedFrom"] == report["imagingStudy"] and cardio["device"] == report["performer"][0]

    [device] = of_type(bundle, "Device")
    assert device["identifier"] == [{"system": MODEL_SYSTEM, "value": "cxr_demo@0.1.0"}]
    assert device["manufacturer"] == "interop" and device["safety"] == [{"text": NOTICE}]
    [patient] = of_type(bundle, "Patient")
    assert set(patient) == {"resourceType", "identifier", "name", "birthDate", "gender"}
    [order, *proposals] = of_type(bundle, "ServiceRequest")
    assert "requester" not in order  # Practitioner/dr-osei only resolves at the node
    # the echo snippet answers two findings: one proposal with both reasons
    echo, referral = proposals
    assert (echo["status"], echo["intent"]) == ("draft", "proposal") and len(echo["reasonReference"]) == 2
    assert echo["note"][1]["text"] == "Source: Demonstration guidance (guidance/x.md#cxr-cardiomegaly-echo)"
    assert referral["category"][0]["coding"][0]["code"] == "3457005"
    [task] = of_type(bundle, "Task")
    assert (task["status"], task["intent"], task["priority"]) == ("requested", "order", "routine")
    assert task["code"]["coding"][0]["code"] == "approve" and task["focus"]["reference"] == _url(bundle, report)
    [prov] = of_type(bundle, "Provenance")
    assert len(prov["target"]) == 6 and prov["entity"] == [{"role": "source", "what": report["imagingStudy"][0]}]
    assert prov["agent"][0]["who"] == report["performer"][0]
    assert of_type(bundle, "Communication") == []


def _url(bundle: dict[str, Any], resource: dict[str, Any]) -> str:
    return str(next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource))


def test_preliminary_posted_twice_stores_one_copy_reusing_the_nodes_resources(store: FhirStore) -> None:
    inp = cxr_input(store)
    before = counts(store)
    assert before["Patient"] == before["ImagingStudy"] == before["ServiceRequest"] == 1
    first = store.transaction(preliminary_bundle(inp))
    after = counts(store)
    # the node's Patient, ImagingStudy and order are reused; the result adds its own
    assert after == {**before, "ServiceRequest": 3, "Observation": 5, "Device": 1, "DiagnosticReport": 1,
                     "Provenance": 1, "Task": 1}
    second = store.transaction(preliminary_bundle(inp))
    assert counts(store) == after
    locations = [[e["response"]["location"].rsplit("/_history/", 1)[0] for e in r["entry"]] for r in (first, second)]
    assert locations[0] == locations[1]
    statuses = [e["response"]["status"] for e in second["entry"]]
    assert statuses[:-1] == ["200 OK"] * (len(statuses) - 1)  # all found; the Provenance PUT stores v2
    report = by_identifier(store, "DiagnosticReport", f"{KEY_CXR}/report")
    assert report["meta"]["versionId"] == "1" and report["status"] == "preliminary"
    [patient] = resources(store, "Patient")
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    [imaging] = resources(store, "ImagingStudy")
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{imaging['id']}"


def test_signoff_accept_makes_report_final_proposals_active_task_completed(store: FhirStore,
                                                                          schema: dict[str, Any]) -> None:
    inp = cxr_input(store)
    store.transaction(preliminary_bundle(inp))
    bundle = signoff_bundle(inp, verdict("accept"))
    check_bundle(schema, bundle)
    assert [e["request"]["method"] for e in bundle["entry"] if e["resource"]["resourceType"] in
            ("DiagnosticReport", "Observation", "Task")] == ["PUT"] * 7
    before = counts(store)
    store.transaction(bundle)
    assert counts(store) == {**before, "Provenance": 2}
    report = by_identifier(store, "DiagnosticReport", f"{KEY_CXR}/report")
    assert report["status"] == "final" and report["meta"]["versionId"] == "2"
    assert report["resultsInterpreter"] == [{"type": "Practitioner", "display": "Dr. Ada Osei",
                                             "identifier": {"system": "urn:interop:user", "value": "u-42"}}]
    assert len(report["presentedForm"]) == 2 and "accepted by Dr. Ada Osei" in report["conclusion"]
    assert {o["status"] for o in resources(store, "Observation")} == {"final"}
    proposals = resources(store, "ServiceRequest", ("intent", "proposal"))
    assert [p["status"] for p in proposals] == ["active", "active"]
    assert {p["meta"]["profile"][0] for p in proposals} == {profile_url("ai-recommendation-reviewed")}
    task = by_identifier(store, "Task", f"{KEY_CXR}/task")
    assert task["status"] == "completed" and task["owner"]["display"] == "Dr. Ada Osei"
    assert task["output"][0]["valueCodeableConcept"]["coding"][0]["code"] == "accept"
    assert task["focus"]["reference"] == f"DiagnosticReport/{report['id']}"
    prov = store.read("Provenance", identifiers(KEY_CXR).verdict_provenance_id(1)).resource
    assert prov["activity"]["coding"][0]["code"] == "LA" and prov["agent"][0]["who"]["display"] == "Dr. Ada Osei"
    assert prov["target"][0]["reference"] == f"DiagnosticReport/{report['id']}"

    # sent again: nothing new at all (an update with the same content makes no new version)
    store.transaction(bundle)
    assert counts(store) == {**before, "Provenance": 2}
    again = by_identifier(store, "DiagnosticReport", f"{KEY_CXR}/report")
    assert again["meta"] == report["meta"] and _content(again) == _content(report)
    # and a late retry of the preliminary Bundle never turns it back
    store.transaction(preliminary_bundle(inp))
    assert by_identifier(store, "DiagnosticReport", f"{KEY_CXR}/report")["status"] == "final"


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def test_signoff_reject_at_a_fresh_server_cancels_and_revokes(store: FhirStore, ehr: FhirStore,
                                                             schema: dict[str, Any]) -> None:
    inp = cxr_input(store)
    bundle = signoff_bundle(inp, verdict("reject", reason="Image is of another body part."))
    check_bundle(schema, bundle)
    ehr.transaction(preliminary_bundle(inp))
    ehr.transaction(bundle)
    report = by_identifier(ehr, "DiagnosticReport", f"{KEY_CXR}/report")
    assert report["status"] == "cancelled" and "conclusionCode" not in report
    assert "Image is of another body part." in report["conclusion"]
    assert {o["status"] for o in resources(ehr, "Observation")} == {"cancelled"}
    assert [p["status"] for p in resources(ehr, "ServiceRequest", ("intent", "proposal"))] == ["revoked", "revoked"]
    task = by_identifier(ehr, "Task", f"{KEY_CXR}/task")
    assert task["status"] == "completed" and task["businessStatus"]["coding"][0]["code"] == "reject"
    assert task["output"][1] == {"type": task["output"][1]["type"], "valueString": "Image is of another body part."}
    prov = ehr.read("Provenance", identifiers(KEY_CXR).verdict_provenance_id(1)).resource
    assert prov["activity"]["coding"][0]["code"] == "ABORT" and prov["reason"] == [
        {"text": "Image is of another body part."}]
    # the EHR had none of the node's resources: the Bundle brought the patient, the study and the order
    assert counts(ehr)["Patient"] == counts(ehr)["ImagingStudy"] == 1


def test_signoff_alone_at_a_fresh_server_is_complete(store: FhirStore, ehr: FhirStore) -> None:
    inp = cxr_input(store)
    ehr.transaction(signoff_bundle(inp, verdict("accept")))
    assert by_identifier(ehr, "DiagnosticReport", f"{KEY_CXR}/report")["status"] == "final"
    assert counts(ehr)["Observation"] == 5 and counts(ehr)["Device"] == 1


def test_amend_after_final_keeps_the_ai_value_beside_the_physicians(store: FhirStore, schema: dict[str, Any]) -> None:
    inp = cxr_input(store)
    store.transaction(preliminary_bundle(inp))
    store.transaction(signoff_bundle(inp, verdict("accept")))
    amend = verdict("amend", "final", sequence=2, conclusion="Mild cardiomegaly. No pulmonary edema.",
                    findings={"edema": False, "effusion": True})
    bundle = signoff_bundle(inp, amend)
    check_bundle(schema, bundle)
    store.transaction(bundle)
    report = by_identifier(store, "DiagnosticReport", f"{KEY_CXR}/report")
    assert report["status"] == "amended" and report["conclusion"] == "Mild cardiomegaly. No pulmonary edema."
    assert [c["coding"][0]["code"] for c in report["conclusionCode"]] == ["8186001", "60046008"]
    signoff = base64.b64decode(report["presentedForm"][1]["data"]).decode()
    assert "Finding edema: physician Absent, AI Present" in signoff and "AI conclusion: AI result" in signoff
    assert base64.b64decode(report["presentedForm"][0]["data"]).decode() == inp.text
    edema = by_identifier(store, "Observation", f"{KEY_CXR}/finding/edema")
    assert edema["status"] == "amended" and edema["valueCodeableConcept"]["coding"][0]["display"] == "Absent"
    ai = next(c for c in edema["component"] if c["code"]["coding"][0]["code"] == "ai-decision")
    assert ai["valueCodeableConcept"]["coding"][0]["display"] == "Present"
    assert edema["note"][-1]["text"] == "Physician: Absent; AI: Present (probability 0.81, threshold 0.74)"
    assert by_identifier(store, "Observation", f"{KEY_CXR}/finding/cardiomegaly")["status"] == "amended"
    # the referral answered edema alone, now absent: revoked; the echo also answers cardiomegaly: active
    echo = by_identifier(store, "ServiceRequest", f"{KEY_CXR}/recommendation/guidance/x.md#cxr-cardiomegaly-echo")
    referral = by_identifier(store, "ServiceRequest", f"{KEY_CXR}/recommendation/guidance/x.md#cxr-edema-cardiology")
    assert (echo["status"], referral["status"]) == ("active", "revoked")
    assert {p["id"] for p in resources(store, "Provenance")} >= {
        identifiers(KEY_CXR).verdict_provenance_id(1), identifiers(KEY_CXR).verdict_provenance_id(2)}


def test_critical_findings_make_one_alert_and_a_stat_task(store: FhirStore, schema: dict[str, Any]) -> None:
    inp = cxr_input(store, critical=["pneumothorax"],
                    probabilities={"cardiomegaly": 0.2, "edema": 0.1, "effusion": 0.1, "pneumothorax": 0.97,
                                   "consolidation": 0.1})
    bundle = preliminary_bundle(inp)
    check_bundle(schema, bundle)
    [task] = of_type(bundle, "Task")
    assert task["priority"] == "stat"
    [comm] = of_type(bundle, "Communication")
    assert (comm["status"], comm["priority"], comm["category"][0]["coding"][0]["code"]) == ("completed", "stat",
                                                                                              "alert")
    assert comm["payload"][0]["contentString"].startswith(
        "Critical AI finding, awaiting physician sign-off: Pneumothorax (p=0.97, threshold 0.09).")
    [entry] = [e for e in bundle["entry"] if e["resource"] is comm]
    assert entry["request"]["ifNoneExist"] == search_query(identifiers(KEY_CXR).communication)
    assert len(comm["about"]) == 2


@pytest.mark.skipif("Communication" not in RESOURCES, reason="this node's FHIR store does not serve Communication")
def test_critical_alert_is_stored_once(store: FhirStore) -> None:
    inp = cxr_input(store, critical=["cardiomegaly"])
    store.transaction(preliminary_bundle(inp))
    store.transaction(preliminary_bundle(inp))
    store.transaction(signoff_bundle(inp, verdict("accept")))
    [comm] = resources(store, "Communication")
    report = by_identifier(store, "DiagnosticReport", f"{KEY_CXR}/report")
    assert comm["about"][0]["reference"] == f"DiagnosticReport/{report['id']}" and comm["meta"]["versionId"] == "1"


def test_mr_measurements_carry_site_laterality_and_unit(store: FhirStore, schema: dict[str, Any]) -> None:
    patient, imaging, _ = seed_study(store)
    inp = ReportInput(key=KEY_MR, job_id=8, result=mr_result(), patient=patient, imaging_study=imaging, order=None,
                      observations=[], recommendations=[], critical=[], text="Brain volumes.\n", issued=ISSUED)
    bundle = preliminary_bundle(inp)
    check_bundle(schema, bundle)
    left = next(o for o in of_type(bundle, "Observation") if o["code"]["text"] == "Left hippocampus volume")
    assert left["valueQuantity"] == {"value": 3.9, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"}
    assert left["bodySite"] == {"coding": [{"system": SNOMED, "code": "5366008", "display": "Hippocampus"}],
                                "text": "Left Hippocampus"}
    assert left["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "7771000"
    [report] = of_type(bundle, "DiagnosticReport")
    assert "5 measurements" in report["conclusion"] and "conclusionCode" not in report and "basedOn" not in report
    store.transaction(bundle)
    store.transaction(bundle)
    assert counts(store)["Observation"] == 5
    store.transaction(signoff_bundle(inp, verdict("accept")))
    assert {o["status"] for o in resources(store, "Observation")} == {"final"}


def test_lab_result_derives_from_the_labs_read_at_the_node_and_at_an_ehr(store: FhirStore, ehr: FhirStore,
                                                                        schema: dict[str, Any]) -> None:
    inp = lab_input(store)
    bundle = preliminary_bundle(inp)
    check_bundle(schema, bundle)
    [report] = of_type(bundle, "DiagnosticReport")
    assert report["meta"]["profile"] == [profile_url("ai-lab-report")] and "imagingStudy" not in report
    assert (report["category"][0]["coding"][0]["code"], report["code"]["coding"][0]["code"]) == ("LAB", "11502-2")
    stage = by_code(of_type(bundle, "Observation"), "pbc-histologic-stage")
    assert stage["meta"]["profile"] == [profile_url("ai-lab-observation")]
    assert stage["valueCodeableConcept"] == {"text": "4"} and len(stage["derivedFrom"]) == 6
    assert [c["valueQuantity"]["value"] for c in stage["component"]][:4] == [0.02, 0.08, 0.25, 0.65]
    assert stage["component"][-1]["code"]["text"] == "copper (input: missing, imputed)"
    [proposal] = [r for r in of_type(bundle, "ServiceRequest") if r.get("intent") == "proposal"]
    assert proposal["reasonReference"][0]["reference"] == _url(bundle, stage)

    before = counts(store)
    store.transaction(bundle)
    store.transaction(bundle)
    after = counts(store)
    assert after["Observation"] == before["Observation"] + 1 and after["Patient"] == 1  # the labs are reused
    stored = by_identifier(store, "Observation", f"{KEY_LAB}/classification/pbc_histologic_stage")
    assert sorted(r["reference"] for r in stored["derivedFrom"]) == sorted(
        f"Observation/{o['id']}" for o in inp.observations)

    ehr.transaction(bundle)  # an EHR that has none of them: they come with the Bundle and derivedFrom resolves
    labs = resources(ehr, "Observation", ("category", "laboratory"))
    at_ehr = by_identifier(ehr, "Observation", f"{KEY_LAB}/classification/pbc_histologic_stage")
    lab_ids = {o["id"] for o in labs if o["identifier"][0]["system"] != IDENTIFIER_SYSTEM}
    assert len(lab_ids) == 6 and {r["reference"].split("/")[1] for r in at_ehr["derivedFrom"]} == lab_ids
    ehr.transaction(signoff_bundle(inp, verdict("accept")))
    assert by_identifier(ehr, "DiagnosticReport", f"{KEY_LAB}/report")["status"] == "final"
    assert by_identifier(ehr, "ServiceRequest", f"{KEY_LAB}/recommendation/guidance/x.md#pbc-hepatology-referral"
                         )["status"] == "active"


def by_code(resources_: list[dict[str, Any]], code: str) -> dict[str, Any]:
    return next(r for r in resources_ if r["code"]["coding"][0]["code"] == code)


# -- rules and refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("previous", "action", "after"), [
    ("preliminary", "accept", "final"), ("preliminary", "amend", "final"), ("final", "accept", "amended"),
    ("final", "amend", "amended"), ("amended", "amend", "amended"), ("preliminary", "reject", "cancelled"),
    ("final", "reject", "entered-in-error"), ("amended", "reject", "entered-in-error"),
])
def test_report_status_after(previous: str, action: str, after: str) -> None:
    assert report_status_after(previous, action) == after


def test_report_status_after_refuses_unknown_action_or_status() -> None:
    with pytest.raises(ValueError, match="not one of"):
        report_status_after("preliminary", "approve")
    with pytest.raises(ValueError, match="cannot be signed"):
        report_status_after("cancelled", "accept")


def test_verdict_refusals(store: FhirStore) -> None:
    with pytest.raises(ValueError, match="reject needs a reason"):
        verdict("reject")
    with pytest.raises(ValueError, match="make an amend"):
        verdict("accept", findings={"edema": False})
    with pytest.raises(ValueError, match="no time zone"):
        Verdict("accept", 1, "u", "U", dt.datetime(2026, 1, 1), "preliminary")
    with pytest.raises(ValueError, match="does not have"):
        signoff_bundle(cxr_input(store), verdict("amend", findings={"nodule": True}))


def test_copy_about_another_patient_is_refused(store: FhirStore) -> None:
    inp = cxr_input(store)
    other = copy.deepcopy(inp.imaging_study)
    assert other is not None
    other["subject"] = {"reference": "Patient/someone-else"}
    with pytest.raises(ValueError, match="not the result's patient"):
        preliminary_bundle(ReportInput(**{**inp.__dict__, "imaging_study": other}))


def test_critical_must_name_a_finding(store: FhirStore) -> None:
    inp = cxr_input(store)
    with pytest.raises(ValueError, match="critical names no finding"):
        ReportInput(**{**inp.__dict__, "critical": ["nodule"]})
