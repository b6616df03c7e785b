"""``patient/`` scopes reach the patient in context only: an EHR-style launch (``interop launch``) gives the
token its patient; at the FHIR API that patient's data is read and searched, another patient's is refused
(403) or left out. And the CapabilityStatement points SMART clients at the authorization server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from interop.auth import Principal, compartment_filter
from interop.auth.compartment import compartment_params, in_compartment
from interop.errors import Forbidden
from tests.auth.smart import auth_server, bearer, claims, cli, sign_in, system_client
from tests.conftest import ServerProc


@pytest.fixture(scope="module")
def data(node: ServerProc) -> Iterator[dict[str, Any]]:
    """Patients X and Y with Observations; X's second Observation derives from Y's."""
    with system_client(node) as c:
        x = c.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Xavier"}]}).json()["id"]
        y = c.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Young"}]}).json()["id"]

        def obs(patient: str, **more: Any) -> str:
            body = {"resourceType": "Observation", "status": "final", "code": {"text": "lab"},
                    "subject": {"reference": f"Patient/{patient}"}, **more}
            got = c.post("/fhir/Observation", json=body)
            assert got.status_code == 201, got.text
            return str(got.json()["id"])

        y_obs = obs(y)
        x_obs = [obs(x), obs(x, derivedFrom=[{"reference": f"Observation/{y_obs}"}])]
    yield {"x": x, "y": y, "x_obs": x_obs, "y_obs": y_obs}


@pytest.fixture(scope="module")
def patient_token(node: ServerProc, data: dict[str, Any]) -> dict[str, Any]:
    launch = cli(node, "launch", "--patient", data["x"])
    assert launch.returncode == 0, launch.stderr
    return sign_in(node, "jane", scope="launch openid patient/*.rs", launch=launch.stdout.strip())


def test_launch_puts_the_patient_in_the_token(node: ServerProc, data: dict[str, Any],
                                              patient_token: dict[str, Any]) -> None:
    assert patient_token["patient"] == data["x"] and patient_token["need_patient_banner"] is True
    assert patient_token["scope"] == "launch openid patient/*.rs"
    assert claims(node, patient_token["access_token"])["patient"] == data["x"]


def test_patient_scope_reads_its_patient_and_not_another(node: ServerProc, data: dict[str, Any],
                                                         patient_token: dict[str, Any]) -> None:
    h = bearer(patient_token["access_token"])
    base = f"{node.base_url}/fhir"
    assert httpx.get(f"{base}/Observation/{data['x_obs'][0]}", headers=h).status_code == 200
    assert httpx.get(f"{base}/Patient/{data['x']}", headers=h).status_code == 200
    for path in (f"Observation/{data['y_obs']}", f"Patient/{data['y']}", f"Observation/{data['y_obs']}/_history",
                 f"Observation/{data['y_obs']}/_history/1"):
        got = httpx.get(f"{base}/{path}", headers=h)
        assert got.status_code == 403, path
        assert got.json()["resourceType"] == "OperationOutcome" and got.json()["issue"][0]["code"] == "forbidden"


def test_patient_scope_searches_only_its_patient(node: ServerProc, data: dict[str, Any],
                                                 patient_token: dict[str, Any]) -> None:
    h = bearer(patient_token["access_token"])
    base = f"{node.base_url}/fhir"

    def ids(resp: httpx.Response) -> set[str]:
        assert resp.status_code == 200, resp.text
        return {e["resource"]["id"] for e in resp.json().get("entry", [])}

    assert ids(httpx.get(f"{base}/Observation", headers=h)) == set(data["x_obs"])
    assert ids(httpx.get(f"{base}/Observation", params={"patient": data["y"]}, headers=h)) == set()
    assert ids(httpx.post(f"{base}/Observation/_search", data={"subject": f"Patient/{data['y']}"},
                          headers=h)) == set()
    # An include reaching another patient's resource is left out.
    assert ids(httpx.get(f"{base}/Observation", params={"_include": "Observation:derived-from"},
                         headers=h)) == set(data["x_obs"])
    assert ids(httpx.get(f"{base}/Patient", headers=h)) == {data["x"]}
    with system_client(node) as c:  # a system token sees both
        assert {data["y_obs"], *data["x_obs"]} <= ids(c.get("/fhir/Observation"))


def test_patient_scope_cannot_write_elsewhere_or_send_bundles(node: ServerProc, data: dict[str, Any]) -> None:
    launch = auth_server(node).create_launch(data["x"])
    token = sign_in(node, "jane", scope="launch patient/Observation.cruds", launch=launch)["access_token"]
    base = f"{node.base_url}/fhir"
    other = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
             "subject": {"reference": f"Patient/{data['y']}"}}
    assert httpx.post(f"{base}/Observation", json=other, headers=bearer(token)).status_code == 403
    own = {**other, "subject": {"reference": f"Patient/{data['x']}"}}
    assert httpx.post(f"{base}/Observation", json=own, headers=bearer(token)).status_code == 201
    assert httpx.put(f"{base}/Observation/{data['y_obs']}", json={**own, "id": data["y_obs"]},
                     headers=bearer(token)).status_code == 403
    assert httpx.delete(f"{base}/Observation/{data['y_obs']}", headers=bearer(token)).status_code == 403
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"request": {"method": "GET", "url": "Observation"}}]}
    assert httpx.post(base, json=bundle, headers=bearer(token)).status_code == 403


def test_standalone_patient_scope_without_a_launch_reaches_no_one(node: ServerProc) -> None:
    got = sign_in(node, "jane", scope="launch/patient patient/*.rs")
    assert "patient" not in got and got["scope"] == "patient/*.rs"  # no patient picker: no patient context
    refused = httpx.get(f"{node.base_url}/fhir/Observation", headers=bearer(got["access_token"]))
    assert refused.status_code == 403 and "patient in context" in refused.json()["issue"][0]["diagnostics"]


def test_capability_statement_names_the_oauth_endpoints(node: ServerProc) -> None:
    security = httpx.get(f"{node.base_url}/fhir/metadata").json()["rest"][0]["security"]
    [ext] = [e for e in security["extension"]
             if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"]
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris["authorize"] == f"{node.base_url}/auth/authorize"
    assert uris["token"] == f"{node.base_url}/auth/token"
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


# -- the pure helper ----------------------------------------------------------------------------------------------


def _p(scope: str, patient: str | None = "X") -> Principal:
    return Principal("u", "c", scope, {"patient": patient} if patient else {})


@pytest.mark.parametrize(
    ("scope", "resource", "permission", "expected"),
    [("patient/*.rs", None, "r", "X"),
     ("patient/*.rs user/Observation.rs", None, "r", None),
     ("patient/*.rs user/Observation.rs", "Observation", "r", None),
     ("patient/*.rs user/Observation.rs", "Task", "r", "X"),
     ("patient/*.rs user/Observation.c", "Observation", "r", "X"),
     ("system/*.cruds", "Observation", "r", None),
     ("openid", None, "r", "X")],
)
def test_compartment_filter_confines_only_patient_scopes(scope: str, resource: str | None, permission: str,
                                                         expected: str | None) -> None:
    assert compartment_filter(_p(scope), resource, permission) == expected


def test_compartment_filter_refuses_patient_scopes_without_a_patient() -> None:
    with pytest.raises(Forbidden):
        compartment_filter(_p("patient/*.rs", patient=None))


def test_in_compartment_follows_each_types_patient_link() -> None:
    assert in_compartment({"resourceType": "Patient", "id": "X"}, "X")
    assert in_compartment({"resourceType": "Task", "for": {"reference": "http://node/fhir/Patient/X"}}, "X")
    assert in_compartment({"resourceType": "Provenance", "target": [{"reference": "Observation/1"},
                                                                    {"reference": "Patient/X/_history/2"}]}, "X")
    assert not in_compartment({"resourceType": "Observation", "subject": {"reference": "Patient/Y"}}, "X")
    assert not in_compartment({"resourceType": "Observation", "subject": {"reference": "Group/X"}}, "X")
    assert not in_compartment({"resourceType": "Device"}, "X")
    assert compartment_params("Observation", "X") == [("patient", "Patient/X")]
    assert compartment_params("Patient", "X") == [("_id", "X")]
    with pytest.raises(Forbidden):
        compartment_params("Unknown", "X")
