"""Write-back destination clients (interop.writeback.destinations) against real peers: Orthanc 1.10 as the
PACS (C-STORE and STOW-RS), a second ``interop serve`` as the EHR (FHIR transactions with a static token and
with SMART Backend Services through tests.peers.TestTokenServer), a pynetdicom SCP answering chosen DIMSE
statuses, an HTTP endpoint for webhooks, our own node over DICOM TLS; and orthanc/autoroute.lua sending a
study's images to the node but none of the node's own results."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from joserfc.jwk import ECKey, RSAKey
from pydantic import TypeAdapter, ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

from interop.writeback.destinations import (
    TOKEN_LEEWAY_SECONDS,
    DeliveryError,
    DestinationConfig,
    DicomDestination,
    DicomwebDestination,
    FhirDestination,
    WebhookDestination,
    destination_from_config,
)
from interop.writeback.sr import measurement_report
from tests.conftest import ServerProc
from tests.peers import (  # noqa: F401  (fixtures: orthanc_factory, orthanc, http_recorder)
    HttpRecorder,
    OrthancPeer,
    StoreScp,
    TestTokenServer,
    http_recorder_fixture,
    orthanc_factory_fixture,
    orthanc_fixture,
)
from tests.support import free_port, make_test_pki
from tests.writeback.test_sr import _cxr_result

CONFIG: TypeAdapter[Any] = TypeAdapter(DestinationConfig)


def make(**cfg: Any) -> Any:
    """A client from configuration data, the way settings will hold it."""
    return destination_from_config(CONFIG.validate_python(cfg))


# -- test objects -------------------------------------------------------------------------------------------------


def ct_image(study_uid: str | None = None) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def our_sr(evidence: Dataset) -> Dataset:
    """A TID 1500 SR of the node (manufacturer "interop", UNVERIFIED) on ``evidence``."""
    return measurement_report(_cxr_result(evidence.SOPInstanceUID), [evidence], series_instance_uid=hd.UID(),
                              sop_instance_uid=hd.UID())


def our_heatmap(evidence: Dataset) -> Dataset:
    """A JPEG-baseline Secondary Capture (Modality OT, manufacturer "interop"): how a heat-map goes back."""
    pixels = (np.add.outer(np.arange(64), np.arange(64)) * 2 % 256).astype(np.uint8)
    return hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="MONOCHROME2", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=evidence.StudyInstanceUID, series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="interop", patient_id=evidence.PatientID,
        patient_name=evidence.PatientName, patient_orientation=("L", "P"), series_description="AI heat-map",
        transfer_syntax_uid=JPEGBaseline8Bit,
    )


def pacs(peer: OrthancPeer, calling_ae: str = "INTEROP", **kw: Any) -> DicomDestination:
    return make(kind="dicom", name="pacs", ae_title=peer.aet, host="127.0.0.1", port=peer.dicom_port,
                calling_ae=calling_ae, timeout_seconds=10, **kw)


def stow(peer: OrthancPeer, url: str | None = None) -> DicomwebDestination:
    return make(kind="dicomweb", name="pacs-web", url=url or peer.dicomweb_url, timeout_seconds=10)


# -- C-STORE to Orthanc -----------------------------------------------------------------------------------------


def test_cstore_sr_is_found_in_orthanc_by_sop_uid(orthanc: OrthancPeer) -> None:
    sr = our_sr(ct_image())
    pacs(orthanc).send([sr])
    found = orthanc.find_instance(sr.SOPInstanceUID)
    assert found is not None
    meta = orthanc.metadata(found["ID"])
    assert meta["RemoteAET"] == "INTEROP" and meta["SopClassUid"] == sr.SOPClassUID


def test_cstore_twice_leaves_one_instance(orthanc: OrthancPeer) -> None:
    ct = ct_image()
    sr = our_sr(ct)
    dest = pacs(orthanc)
    dest.send([ct, sr])
    dest.send([ct, sr])
    assert len(orthanc.instances()) == 2
    assert orthanc.find_instance(sr.SOPInstanceUID) is not None  # raises if there were two


def test_cstore_to_stopped_orthanc_is_retryable_then_works_when_it_is_back(orthanc: OrthancPeer) -> None:
    dest = pacs(orthanc)
    first, second = our_sr(ct_image()), our_sr(ct_image())
    dest.send([first])
    orthanc.stop()
    with pytest.raises(DeliveryError) as err:
        dest.send([second])
    assert err.value.retryable
    assert f"could not connect to 127.0.0.1:{orthanc.dicom_port}" in err.value.reason
    assert "refused" in err.value.reason.lower()
    assert err.value.destination == "pacs" and str(err.value).startswith("pacs: ")
    orthanc.start()  # same storage: down for a while, then back
    dest.send([second])
    assert orthanc.find_instance(first.SOPInstanceUID) and orthanc.find_instance(second.SOPInstanceUID)


def test_cstore_jpeg_baseline_secondary_capture_goes_compressed(orthanc: OrthancPeer) -> None:
    sc = our_heatmap(ct_image())
    assert sc.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    undefined_length = sc["PixelData"].is_undefined_length
    pacs(orthanc).send([sc])
    assert sc["PixelData"].is_undefined_length is undefined_length  # the caller's data set is left as it was
    found = orthanc.find_instance(sc.SOPInstanceUID)
    assert found is not None
    assert orthanc.metadata(found["ID"])["TransferSyntax"] == JPEGBaseline8Bit  # not decompressed on the way


def test_cstore_to_wrong_called_ae_is_rejected_with_a_hint(tmp_path: Path) -> None:
    scp = StoreScp("PACS", allowed_calling_aes=["SOMEONE"]).start()
    try:
        dest = make(kind="dicom", name="pacs", ae_title="PACS", host="127.0.0.1", port=scp.port, timeout_seconds=5)
        with pytest.raises(DeliveryError) as err:
            dest.send([ct_image()])
    finally:
        scp.stop()
    assert err.value.retryable
    assert "association rejected by PACS@127.0.0.1" in err.value.reason
    assert "Calling AE title not recognised" in err.value.reason and "'INTEROP'" in err.value.reason


@pytest.mark.parametrize(("status", "retryable"), [(0xA700, True), (0xA900, False), (0xC123, False)])
def test_cstore_failure_status_is_classified_with_the_peers_comment(status: int, retryable: bool) -> None:
    scp = StoreScp("PACS", status=status, error_comment="disk says no").start()
    try:
        dest = make(kind="dicom", name="pacs", ae_title="PACS", host="127.0.0.1", port=scp.port, timeout_seconds=5)
        sr, ct = our_sr(ct_image()), ct_image()
        with pytest.raises(DeliveryError) as err:
            dest.send([sr, ct])
    finally:
        scp.stop()
    assert err.value.retryable is retryable and err.value.status == status
    assert f"0x{status:04X}" in err.value.reason and "'disk says no'" in err.value.reason
    assert "did not store 2 of 2" in err.value.reason
    assert set(err.value.sop_instance_uids) == {sr.SOPInstanceUID, ct.SOPInstanceUID}


def test_cstore_decompresses_when_the_pacs_refuses_jpeg(tmp_path: Path) -> None:
    """A PACS that takes Secondary Capture only uncompressed gets the heat-map decompressed."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import SecondaryCaptureImageStorage

    got: list[tuple[str, int]] = []

    def on_store(event: Any) -> int:
        got.append((str(event.context.transfer_syntax), len(event.dataset.PixelData)))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(SecondaryCaptureImageStorage)  # uncompressed transfer syntaxes only
    server = ae.start_server(("127.0.0.1", port := free_port()), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        make(kind="dicom", name="pacs", ae_title="PACS", host="127.0.0.1", port=port).send([our_heatmap(ct_image())])
    finally:
        server.shutdown()
    [(syntax, size)] = got
    assert not UID(syntax).is_compressed and size == 64 * 64  # decoded pixels, one byte each


# -- STOW-RS to Orthanc -----------------------------------------------------------------------------------------


def test_stow_to_orthanc_stores_every_instance(orthanc: OrthancPeer) -> None:
    ct = ct_image()
    items = [our_sr(ct), our_heatmap(ct)]
    stow(orthanc).send(items)
    for ds in items:
        assert orthanc.find_instance(ds.SOPInstanceUID) is not None
    stow(orthanc).send(items)  # again: still one each
    assert len(orthanc.instances()) == 2


def test_stow_to_wrong_url_is_not_retryable_404(orthanc: OrthancPeer) -> None:
    with pytest.raises(DeliveryError) as err:
        stow(orthanc, url=f"{orthanc.url}/dicom-webb").send([our_sr(ct_image())])
    assert not err.value.retryable and err.value.status == 404
    assert "HTTP 404" in err.value.reason and "Unknown resource" in err.value.reason  # Orthanc's own words
    assert "check the URL" in err.value.reason


def test_stow_to_stopped_orthanc_is_retryable(orthanc: OrthancPeer) -> None:
    orthanc.stop(graceful=False)
    with pytest.raises(DeliveryError) as err:
        stow(orthanc).send([our_sr(ct_image())])
    assert err.value.retryable and "could not reach" in err.value.reason and "ConnectError" in err.value.reason


# -- our own node as a second peer (the EHR, a STOW-RS service) -------------------------------------------------


@pytest.fixture(scope="module")
def ehr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A second ``interop serve``: the EHR's FHIR server (and a DICOMweb service with its own refusals)."""
    node = ServerProc(data_dir=tmp_path_factory.mktemp("ehr") / "node").start()
    yield node
    node.stop()


def test_stow_failed_sop_sequence_is_not_retryable_and_names_the_instance(ehr: ServerProc) -> None:
    bad = our_sr(ct_image())
    del bad.StudyInstanceUID  # the node cannot file it: A900 in the FailedSOPSequence
    good = our_sr(ct_image())
    dest = make(kind="dicomweb", name="node-web", url=ehr.dicomweb_url,
                auth={"kind": "bearer", "token": ehr.token()})
    with pytest.raises(DeliveryError) as err:
        dest.send([good, bad])
    assert not err.value.retryable and err.value.sop_instance_uids == (bad.SOPInstanceUID,)
    assert "FailedSOPSequence" in err.value.reason and bad.SOPInstanceUID in err.value.reason
    assert "0xA900" in err.value.reason


def bundle(tag: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": tag}]}},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "preliminary", "code": {"text": f"finding {tag}"},
                      "subject": {"reference": "urn:uuid:p"}}},
    ]}


def fhir(ehr: ServerProc, auth: dict[str, Any], **kw: Any) -> FhirDestination:
    return make(kind="fhir", name="ehr", base_url=f"{ehr.base_url}/fhir", auth=auth, timeout_seconds=20, **kw)


def patients(ehr: ServerProc, tag: str) -> int:
    with ehr.client() as c:
        return int(c.get("/fhir/Patient", params={"identifier": f"urn:test|{tag}"}).json()["total"])


def test_fhir_transaction_with_static_bearer_token(ehr: ServerProc) -> None:
    answer = fhir(ehr, {"kind": "bearer", "token": ehr.token()}).transaction(bundle("static"))
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["201", "201"]
    assert patients(ehr, "static") == 1


def test_fhir_wrong_bearer_token_is_not_retryable_401(ehr: ServerProc) -> None:
    with pytest.raises(DeliveryError) as err:
        fhir(ehr, {"kind": "bearer", "token": "nonsense"}).transaction(bundle("nope"))
    assert not err.value.retryable and err.value.status == 401
    assert "OperationOutcome" in err.value.reason and "malformed token" in err.value.reason  # the EHR's own words


def test_fhir_invalid_bundle_is_refused_with_the_operation_outcome(ehr: ServerProc) -> None:
    b = bundle("invalid")
    del b["entry"][1]["resource"]["code"]  # Observation.code is required
    with pytest.raises(DeliveryError) as err:
        fhir(ehr, {"kind": "bearer", "token": ehr.token()}).transaction(b)
    assert not err.value.retryable and err.value.status in (400, 422)
    assert "OperationOutcome: error" in err.value.reason and "code" in err.value.reason
    assert patients(ehr, "invalid") == 0


# -- SMART Backend Services ---------------------------------------------------------------------------------------


@pytest.fixture
def smart(ehr: ServerProc, tmp_path: Path) -> Iterator[Callable[..., tuple[TestTokenServer, FhirDestination]]]:
    """``make(algorithm, signing_key=None, expires_in=300)``: a token server that knows one registered key and a
    FHIR destination that signs its assertions with ``signing_key`` (default: the registered one)."""
    servers: list[TestTokenServer] = []
    clients: list[FhirDestination] = []

    def build(algorithm: str = "RS384", signing_key: Any = None,
              expires_in: int = 300) -> tuple[TestTokenServer, FhirDestination]:
        registered = (RSAKey.generate_key(2048, parameters={"kid": "k1"}) if algorithm == "RS384"
                      else ECKey.generate_key("P-384", parameters={"kid": "k1"}))
        jwks = {"keys": [registered.as_dict(private=False)]}
        server = TestTokenServer.for_node(ehr, client_id="interop-writeback", jwks=jwks, expires_in=expires_in)
        servers.append(server.start())
        key_file = tmp_path / f"client-{len(servers)}.pem"
        key_file.write_bytes((signing_key or registered).as_pem(private=True))
        dest = fhir(ehr, {"kind": "smart-backend", "token_url": server.url, "client_id": "interop-writeback",
                          "private_key_file": str(key_file), "key_id": "k1", "algorithm": algorithm,
                          "scope": "system/Patient.c system/Observation.c"})
        clients.append(dest)
        return server, dest

    yield build
    for c in clients:
        c.close()
    for s in servers:
        s.stop()


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_smart_backend_token_is_fetched_once_for_two_transactions(
        smart: Callable[..., tuple[TestTokenServer, FhirDestination]], ehr: ServerProc, algorithm: str) -> None:
    server, dest = smart(algorithm)
    dest.transaction(bundle(f"smart-{algorithm}-1"))
    dest.transaction(bundle(f"smart-{algorithm}-2"))
    assert server.granted == 1 and len(server.requests) == 1
    form = server.requests[0][0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["scope"] == "system/Patient.c system/Observation.c"
    assert patients(ehr, f"smart-{algorithm}-1") == 1 and patients(ehr, f"smart-{algorithm}-2") == 1


def test_smart_backend_wrong_key_is_refused_clearly_and_not_retryable(
        smart: Callable[..., tuple[TestTokenServer, FhirDestination]], ehr: ServerProc) -> None:
    server, dest = smart("RS384", signing_key=RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    with pytest.raises(DeliveryError) as err:
        dest.transaction(bundle("smart-wrong-key"))
    assert not err.value.retryable
    assert "SMART token request" in err.value.reason and "invalid_client" in err.value.reason
    assert "not verified with the registered keys" in err.value.reason  # the token endpoint's own words
    assert server.granted == 0 and patients(ehr, "smart-wrong-key") == 0


def test_smart_backend_fetches_a_new_token_once_on_401(
        smart: Callable[..., tuple[TestTokenServer, FhirDestination]], ehr: ServerProc) -> None:
    server, dest = smart("RS384")
    server.bad_tokens = 1  # the first access token is one the EHR does not accept
    dest.transaction(bundle("smart-401"))
    assert server.granted == 2 and patients(ehr, "smart-401") == 1

    server, dest = smart("RS384")
    server.bad_tokens = 2  # the fresh token is refused too: one retry only, then say so
    with pytest.raises(DeliveryError) as err:
        dest.transaction(bundle("smart-401-again"))
    assert not err.value.retryable and err.value.status == 401 and server.granted == 2
    assert "malformed token" in err.value.reason  # the EHR's OperationOutcome, carried


def test_smart_backend_fetches_a_new_token_shortly_before_expiry(
        smart: Callable[..., tuple[TestTokenServer, FhirDestination]]) -> None:
    server, dest = smart("RS384", expires_in=TOKEN_LEEWAY_SECONDS + 1)
    dest.transaction(bundle("smart-exp-1"))
    time.sleep(1.2)
    dest.transaction(bundle("smart-exp-2"))
    assert server.granted == 2


def test_smart_backend_key_must_fit_the_algorithm(tmp_path: Path) -> None:
    pem = tmp_path / "ec.pem"
    pem.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    cfg = {"kind": "fhir", "name": "ehr", "base_url": "http://ehr/fhir",
           "auth": {"kind": "smart-backend", "token_url": "http://ehr/token", "client_id": "c",
                    "private_key_file": str(pem), "algorithm": "ES384"}}
    with pytest.raises(ValidationError, match="ES384 needs P-384"):
        CONFIG.validate_python(cfg)
    cfg["auth"]["algorithm"] = "RS384"  # type: ignore[index]
    with pytest.raises(ValidationError, match="not an RSA private key"):
        CONFIG.validate_python(cfg)


# -- webhook ---------------------------------------------------------------------------------------------------


def test_webhook_posts_json_with_idempotency_key(http_recorder: HttpRecorder) -> None:
    dest: WebhookDestination = make(kind="webhook", name="hook", url=f"{http_recorder.base_url}/hook",
                                    headers={"X-Api-Key": "k"})
    dest.post({"job": 7, "status": "preliminary"}, idempotency_key="job-7-sr")
    [req] = http_recorder.requests
    assert req.path == "/hook" and req.json() == {"job": 7, "status": "preliminary"}
    assert req.headers["Idempotency-Key"] == "job-7-sr" and req.headers["X-Api-Key"] == "k"
    assert req.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (429, True), (409, True), (422, False),
                                                   (404, False)])
def test_webhook_http_status_is_classified(http_recorder: HttpRecorder, status: int, retryable: bool) -> None:
    http_recorder.statuses = [status]
    dest = make(kind="webhook", name="hook", url=f"{http_recorder.base_url}/hook")
    with pytest.raises(DeliveryError) as err:
        dest.post({"x": 1}, idempotency_key="k")
    assert err.value.retryable is retryable and err.value.status == status
    assert f"HTTP {status}" in err.value.reason


def test_webhook_connection_refused_is_retryable() -> None:
    dest = make(kind="webhook", name="hook", url=f"http://127.0.0.1:{free_port()}/hook", timeout_seconds=5)
    with pytest.raises(DeliveryError) as err:
        dest.post({"x": 1}, idempotency_key="k")
    assert err.value.retryable and "could not reach" in err.value.reason


# -- DICOM over TLS to our own node -----------------------------------------------------------------------------


def test_cstore_over_mutual_tls_to_our_node(server_factory: Any, tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    node = server_factory({"INTEROP_DICOM__TLS__CERT_FILE": str(pki["server_cert"]),
                           "INTEROP_DICOM__TLS__KEY_FILE": str(pki["server_key"]),
                           "INTEROP_DICOM__TLS__CA_FILE": str(pki["ca"]),
                           "INTEROP_DICOM__TLS__REQUIRE_CLIENT_CERT": "true"})
    base = {"kind": "dicom", "name": "node", "ae_title": "INTEROP", "host": "127.0.0.1", "port": node.dicom_port,
            "timeout_seconds": 10}
    sr = our_sr(ct_image())
    make(**base, tls={"ca_file": str(pki["ca"]), "cert_file": str(pki["client_cert"]),
                      "key_file": str(pki["client_key"])}).send([sr])
    with node.client() as c:
        assert [i["00080018"]["Value"][0] for i in c.get("/dicomweb/instances").json()] == [sr.SOPInstanceUID]
    with pytest.raises(DeliveryError) as err:  # no client certificate: the node refuses the handshake
        make(**base, tls={"ca_file": str(pki["ca"])}).send([our_sr(ct_image())])
    assert err.value.retryable and "127.0.0.1" in err.value.reason
    with pytest.raises(DeliveryError) as err:  # plain TCP to a TLS port
        make(**base).send([our_sr(ct_image())])
    assert err.value.retryable


# -- configuration ---------------------------------------------------------------------------------------------


def test_configuration_is_checked_and_discriminated_on_kind(tmp_path: Path) -> None:
    dicom = CONFIG.validate_python({"kind": "dicom", "name": "pacs", "ae_title": "ORTHANC", "host": "pacs",
                                    "port": 4242})
    assert dicom.calling_ae == "INTEROP" and dicom.enabled and dicom.breaker.failure_threshold == 5
    assert dicom.max_attempts >= 1 and dicom.give_up_after_seconds > 0
    web = CONFIG.validate_python({"kind": "dicomweb", "name": "w", "url": "http://pacs:8042/dicom-web/",
                                  "auth": {"kind": "basic", "username": "u", "password": "s3cret"}})
    assert web.url == "http://pacs:8042/dicom-web" and "s3cret" not in repr(web)
    for bad in ({"kind": "dicom", "name": "x", "ae_title": "A" * 17, "host": "h", "port": 1},
                {"kind": "dicomweb", "name": "x", "url": "ftp://pacs"},
                {"kind": "webhook", "name": "x y", "url": "http://h"},
                {"kind": "webhook", "name": "x", "url": "http://h", "retries": 3},
                {"kind": "dicom", "name": "x", "ae_title": "A", "host": "h", "port": 1,
                 "tls": {"cert_file": str(tmp_path / "missing.pem")}},
                {"kind": "smtp", "name": "x"}):
        with pytest.raises(ValidationError):
            CONFIG.validate_python(bad)


# -- Orthanc's auto-routing never sends our results back --------------------------------------------------------


def test_autoroute_sends_the_image_but_none_of_our_results(orthanc_factory: Callable[..., OrthancPeer]) -> None:
    node = StoreScp("INTEROP").start()
    try:
        peer = orthanc_factory(autoroute=True, node_port=node.port, stable_age=2)
        ct = ct_image()
        sr = our_sr(ct)  # ours, by C-STORE from AE INTEROP
        heatmap = our_heatmap(ct)  # ours, by STOW-RS (no AE title), Modality OT: only Manufacturer tells
        vendor_sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))  # a CAD vendor's SR from another AE
        for attr in ("PatientID", "PatientName", "StudyInstanceUID"):
            setattr(vendor_sr, attr, getattr(ct, attr))
        vendor_sr.Manufacturer = "CAD Vendor"
        vendor_sr.SOPInstanceUID = vendor_sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        pacs(peer, calling_ae="MODALITY").send([ct])
        pacs(peer).send([sr])
        stow(peer).send([heatmap])
        pacs(peer, calling_ae="CADVENDOR").send([vendor_sr])
        study = peer.rest("GET", f"/instances/{peer.find_instance(ct.SOPInstanceUID)['ID']}/study")["ID"]  # type: ignore[index]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                peer.rest("GET", f"/studies/{study}")["IsStable"] and peer.jobs()
                and all(j["State"] == "Success" for j in peer.jobs())):
            time.sleep(0.2)
        time.sleep(1)  # room for a (wrong) second job
        assert node.sop_instance_uids == [ct.SOPInstanceUID], peer.lua_log()
        assert len(peer.jobs()) == 1
        said = peer.lua_log()
        assert any("sends 1 instance(s)" in ln and "2 ours by AE or manufacturer" in ln
                   and "1 results by modality/SOP class" in ln for ln in said), said
    finally:
        node.stop()


def test_orthanc_peer_lookup_helpers(orthanc: OrthancPeer) -> None:
    assert orthanc.instances() == [] and orthanc.find_instance("1.2.3") is None
    assert "dicom-web" in httpx.get(f"{orthanc.url}/plugins").json()
