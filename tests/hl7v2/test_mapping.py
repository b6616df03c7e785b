"""HL7 v2 → FHIR R4 mapping (pure functions): every mapped resource validates with ``fhir.resources.R4B``."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import get_fhir_model_class

from interop.errors import (
    InteropError,
    InvalidInput,
    MissingMessageType,
    RequiredFieldMissing,
    SegmentError,
    TableValueNotFound,
    UnsupportedEventCode,
    UnsupportedMessageType,
)
from interop.hl7v2.mapping import LOINC, UCUM, V3_INTERPRETATION, MappingOptions, to_bundle
from interop.hl7v2.parse import parse
from tests.hl7v2.support import MESSAGES, oru, sample

OPTIONS = MappingOptions(tz=ZoneInfo("Europe/Berlin"))


def _map(raw: bytes, options: MappingOptions = OPTIONS) -> dict[str, Any]:
    return to_bundle(parse(raw), options).bundle


def _resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


@pytest.mark.parametrize("name", sorted(p.name for p in MESSAGES.glob("*.hl7")))
def test_map_sample_every_resource_validates_as_r4(name: str) -> None:
    bundle = _map(sample(name))
    assert bundle["type"] == "transaction" and bundle["entry"]
    get_fhir_model_class("Bundle").model_validate(bundle)
    for entry in bundle["entry"]:
        res = entry["resource"]
        get_fhir_model_class(res["resourceType"]).model_validate(res)
        req = entry["request"]
        # every write is conditional on a business identifier: replaying the message changes nothing
        assert (req["method"] == "PUT" and "?identifier=" in req["url"]) or (
            req["method"] == "POST" and req["ifNoneExist"].startswith("identifier="))


def test_map_oru_lab_panel_loinc_ucum_range_flags() -> None:
    bundle = _map(sample("oru_r01_cmp.hl7"))
    [patient] = _resources(bundle, "Patient")
    assert patient["identifier"][0] == {
        "system": "urn:oid:2.16.840.1.113883.3.9999.2", "value": "MRN483920",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}
    assert patient["birthDate"] == "1962-03-14" and patient["gender"] == "female"
    [report] = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "final" and report["code"]["coding"][0] == {
        "code": "24323-8", "system": LOINC, "display": "Comprehensive metabolic 2000 panel - Serum or Plasma"}
    assert report["identifier"][0]["value"] == "FIL-20261120-0457"
    assert report["conclusion"] == "Specimen slightly lipemic."
    observations = _resources(bundle, "Observation")
    assert len(observations) == 8 and len(report["result"]) == 8
    glucose = observations[0]
    assert glucose["code"]["coding"][0]["system"] == LOINC and glucose["code"]["coding"][0]["code"] == "2345-7"
    assert glucose["valueQuantity"] == {"value": 142, "unit": "milligram per deciliter", "system": UCUM,
                                        "code": "mg/dL"}
    assert glucose["referenceRange"][0]["low"]["value"] == 70 and glucose["referenceRange"][0]["high"]["value"] == 99
    assert glucose["interpretation"][0]["coding"][0] == {"system": V3_INTERPRETATION, "code": "H", "display": "High"}
    assert glucose["status"] == "final"
    assert glucose["effectiveDateTime"] == "2026-11-20T07:15:00+01:00"
    assert glucose["subject"]["reference"] == bundle["entry"][0]["fullUrl"]
    alt = next(o for o in observations if o["code"]["coding"][0]["code"] == "1742-6")
    assert alt["note"] == [{"text": "Repeat ALT in 4 weeks suggested."}]
    egfr = observations[-1]
    assert egfr["referenceRange"][0]["low"]["value"] == 59 and "high" not in egfr["referenceRange"][0]
    assert egfr["interpretation"][0]["coding"][0]["code"] == "L"


def test_map_oru_two_orders_statuses_and_value_types() -> None:
    bundle = _map(sample("oru_r01_cbc_a1c.hl7"))
    cbc, a1c = _resources(bundle, "DiagnosticReport")
    assert (cbc["status"], a1c["status"]) == ("preliminary", "final")
    obs = _resources(bundle, "Observation")
    assert [o["status"] for o in obs] == ["preliminary"] * 4 + ["final"] * 2
    assert obs[3]["valueString"] == "Pending smear review"
    assert obs[5]["valueCodeableConcept"]["coding"][0] == {"code": "10828004", "system": "http://snomed.info/sct",
                                                           "display": "Positive"}
    assert obs[5]["referenceRange"] == [{"text": "Negative"}]
    # offset-less times are read in the configured zone (CET in November)
    assert obs[0]["effectiveDateTime"] == "2026-11-20T07:15:00+01:00"


def test_map_correction_keeps_the_observation_identity() -> None:
    """OBX-11 C: the same conditional update as the original result, so the store replaces it."""
    first = {e["request"]["url"]: e for e in _map(sample("oru_r01_cmp.hl7"))["entry"]}
    corrected = _map(sample("oru_r01_cmp_corrected.hl7"))
    [obs] = _resources(corrected, "Observation")
    entry = next(e for e in corrected["entry"] if e["resource"] is obs)
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 124
    assert entry["request"]["method"] == "PUT" and entry["request"]["url"] in first
    assert first[entry["request"]["url"]]["resource"]["valueQuantity"]["value"] == 142
    assert _resources(corrected, "DiagnosticReport")[0]["status"] == "corrected"


def test_map_adt_updates_patient_and_orders_create_it() -> None:
    a01 = _map(sample("adt_a01.hl7"))
    [entry] = a01["entry"]
    assert entry["request"] == {"method": "PUT",
                                "url": "Patient?identifier=urn:oid:2.16.840.1.113883.3.9999.2|MRN551207"}
    p = entry["resource"]
    assert p["name"][0] == {"family": "Lindqvist", "given": ["Johan", "Erik"], "suffix": ["Jr."], "use": "official"}
    assert {"system": "email", "value": "j.lindqvist@example.org", "use": "home"} in p["telecom"]
    a08 = _map(sample("adt_a08.hl7"))["entry"][0]
    assert a08["request"] == entry["request"] and a08["resource"]["address"][0]["city"] == "Chatham"
    orm = _map(sample("orm_o01.hl7"))
    assert orm["entry"][0]["request"]["method"] == "POST"  # an order never overwrites registration data


def test_map_orders_to_service_requests() -> None:
    [orm_sr] = _resources(_map(sample("orm_o01.hl7")), "ServiceRequest")
    assert orm_sr["intent"] == "order" and orm_sr["status"] == "active"
    assert orm_sr["code"]["coding"][0] == {"code": "24627-2", "system": LOINC, "display": "CT Chest"}
    assert orm_sr["identifier"][0]["value"] == "ORD-55101-1"
    assert orm_sr["authoredOn"] == "2026-11-20T11:58:00+01:00"
    omi = _map(sample("omi_o23.hl7"))
    [omi_sr] = _resources(omi, "ServiceRequest")
    assert [i["type"]["coding"][0]["code"] for i in omi_sr["identifier"]] == ["PLAC", "FILL", "ACSN"]
    assert omi_sr["occurrenceDateTime"] == "2026-11-20T14:00:00+01:00"
    # the same placer order number: the OMI updates the ORM's ServiceRequest
    assert omi["entry"][1]["request"]["url"] == _map(sample("orm_o01.hl7"))["entry"][1]["request"]["url"]


def test_map_order_status_from_orc5_then_orc1() -> None:
    raw = sample("orm_o01.hl7").replace(b"ORC|NW|", b"ORC|CA|").replace(b"|GRP-55101^GENHOSP_OE|SC|", b"||CA|")
    assert _resources(_map(raw), "ServiceRequest")[0]["status"] == "revoked"


def test_map_latin1_message_decoded_per_msh18() -> None:
    [p] = _resources(_map(sample("adt_a08_latin1.hl7")), "Patient")
    assert p["name"][0]["family"] == "Müller" and p["address"][0]["line"] == ["Königstraße 5"]


def test_map_identifier_system_from_settings_and_sender_scope() -> None:
    options = MappingOptions(identifier_systems={"GENLAB": "https://lab.example.org/orders"})
    bundle = _map(oru("C1"), options)
    [report] = _resources(bundle, "DiagnosticReport")
    assert report["identifier"][0]["system"] == "https://lab.example.org/orders"
    # PID-3 with an authority namespace only
    assert _resources(bundle, "Patient")[0]["identifier"][0]["system"] == "urn:hl7v2:GENHOSP"
    no_authority = oru("C2").replace(b"MRN900001^^^GENHOSP^MR", b"MRN900001")
    assert _resources(_map(no_authority), "Patient")[0]["identifier"][0]["system"] == "urn:hl7v2:GENLAB"


def test_map_sn_comparator_and_escaped_text() -> None:
    raw = oru("C3").replace(b"NM|2571-8", b"SN|2571-8").replace(b"||1.3|", b"||<^0.5|")
    raw = raw.replace(b"Doe^Jane", b"O\\T\\Brien^Jane")
    bundle = _map(raw)
    assert _resources(bundle, "Observation")[1]["valueQuantity"]["comparator"] == "<"
    assert _resources(bundle, "Patient")[0]["name"][0]["family"] == "O&Brien"


def test_map_utc_when_configured_timezone_is_utc() -> None:
    bundle = _map(oru("C4"), MappingOptions(tz=dt.UTC))
    assert _resources(bundle, "Observation")[0]["effectiveDateTime"] == "2026-11-20T07:15:00+00:00"


@pytest.mark.parametrize(("edit", "error", "location"), [
    ((b"|ORU^R01^ORU_R01|", b"||"), MissingMessageType, "MSH[1]-9"),
    ((b"|ORU^R01^ORU_R01|", b"|SIU^S12|"), UnsupportedMessageType, "MSH[1]-9.1"),
    ((b"|ORU^R01^ORU_R01|", b"|ORU^R30|"), UnsupportedEventCode, "MSH[1]-9.2"),
    ((b"MRN900001^^^GENHOSP^MR", b""), RequiredFieldMissing, "PID[1]-3"),
    ((b"||5.4|", b"||five|"), InvalidInput, "OBX[1]-5"),
    ((b"|<5.2|H|||F", b"|<5.2|H|||Q"), TableValueNotFound, "OBX[1]-11"),
    ((b"|<5.2|H|||F", b"|<5.2|H|||"), RequiredFieldMissing, "OBX[1]-11"),
    ((b"|19800101|F", b"|19801301|F"), InvalidInput, "PID[1]-7"),
    ((b"PID|1|", b"PI|1|"), SegmentError, None),
    ((b"OBR|1|PLC-FIL-1^OE|FIL-1^GENLAB|", b"OBR|1|||"), RequiredFieldMissing, "OBR[1]-3"),
    ((b"|20261120071500|", b"|2026112007150|"), InvalidInput, "OBR[1]-7"),
])
def test_map_refuses_with_error_and_location(edit: tuple[bytes, bytes], error: type[InteropError],
                                             location: str | None) -> None:
    raw = oru("E1").replace(*edit)
    with pytest.raises(error) as info:
        _map(raw)
    assert info.value.expression == location
    assert info.value.message


def test_map_oru_without_pid_or_obr_is_a_segment_error() -> None:
    raw = oru("E2")
    no_pid = b"\r".join(s for s in raw.split(b"\r") if not s.startswith(b"PID"))
    with pytest.raises(SegmentError, match="no PID"):
        _map(no_pid)
    obx_first = b"\r".join(s for s in raw.split(b"\r") if not s.startswith(b"OBR"))
    with pytest.raises(SegmentError, match="OBX before any OBR"):
        _map(obx_first)


def test_map_oru_report_and_results_based_on_the_placer_order() -> None:
    oru = _map(sample("oru_r01_cmp.hl7"))
    [sr_entry] = [e for e in oru["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
    # created only when the order message never came; an ORM/OMI under the same placer number wins
    assert sr_entry["request"]["method"] == "POST"
    assert sr_entry["request"]["ifNoneExist"] == "identifier=urn:hl7v2:GENHOSP_OE|PLC-778812"
    assert sr_entry["resource"]["intent"] == "order" and sr_entry["resource"]["status"] == "completed"
    [report] = _resources(oru, "DiagnosticReport")
    assert report["basedOn"] == [{"reference": sr_entry["fullUrl"]}]
    assert all(o["basedOn"] == report["basedOn"] for o in _resources(oru, "Observation"))
    orm_url = _map(sample("orm_o01.hl7"))["entry"][1]["request"]["url"]
    assert orm_url.startswith("ServiceRequest?identifier=urn:hl7v2:GENHOSP_OE|")  # the same identifier system
