"""Bad input and unwelcome callers get the standard refusal, and the node stays up (DESIGN promises 3, 4).

C-STORE statuses are PS3.4 Annex B.2.3 (Table B.2-1) and PS3.7 Annex C; association rejections are
PS3.8 §9.3.4 (A-ASSOCIATE-RJ result/source/reason).
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    Verification,
)

from tests.conftest import ServerProc
from tests.dicom.peers import (
    association,
    blob_files,
    contexts_for,
    counts,
    ct_small,
    dataset_bytes,
    echoscu,
    fresh_instance,
    index,
    send,
    temp_files,
)
from tests.support import sample_file

pytestmark = pytest.mark.peer


def _assert_still_serving(server: ServerProc) -> None:
    out = echoscu(server)
    assert out.returncode == 0, f"the node stopped answering C-ECHO:\n{out.stderr}\n{server.log()}"
    assert server.proc is not None and server.proc.poll() is None


def _altered(path: Path, tmp_path: Path) -> Path:
    """The same SOP Instance UID with a different payload."""
    ds = dcmread(path)
    ds.StudyDescription = "a different payload under the same UID"
    out = tmp_path / "altered.dcm"
    ds.save_as(out)
    return out


# -- data sets the node can't store ------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [5000, 38000], ids=["in-pixel-data", "in-header"])
def test_c_store_truncated_data_set_refused_c210(server: ServerProc, tmp_path: Path, cut: int) -> None:
    whole = fresh_instance(ct_small(), tmp_path)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - cut])
    # Streamed as-is (STORE_SEND_CHUNKED_DATASET): exactly the truncated bytes go on the wire.
    assert send(server, truncated) == [0xC210]
    assert counts(server) == (0, 0, 0)
    assert temp_files(server) == []
    _assert_still_serving(server)
    assert send(server, whole) == [0x0000], "the same instance, whole, is then stored"


def test_c_store_without_sop_instance_uid_refused_a900(server: ServerProc, tmp_path: Path) -> None:
    ds = dcmread(ct_small())
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # what the C-STORE command will carry
    del ds.SOPInstanceUID
    path = tmp_path / "no-sop-uid.dcm"
    ds.save_as(path)
    assert send(server, path) == [0xA900]
    assert counts(server) == (0, 0, 0)
    _assert_still_serving(server)


def test_c_store_uid_differing_from_command_refused_a900(server: ServerProc, tmp_path: Path) -> None:
    ds = dcmread(fresh_instance(ct_small(), tmp_path))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path)
    assert send(server, path) == [0xA900]
    assert counts(server) == (0, 0, 0)


def test_c_store_series_of_another_study_refused_a900(server: ServerProc, tmp_path: Path) -> None:
    """A Series Instance UID belongs to one study; a second study claiming it is refused, not cross-linked."""
    first = fresh_instance(ct_small(), tmp_path / "a")
    series_uid = str(dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
    intruder = fresh_instance(ct_small(), tmp_path / "b", study_uid=generate_uid(), series_uid=series_uid)
    assert send(server, first, intruder) == [0x0000, 0xA900]
    assert counts(server) == (1, 1, 1)
    assert len(blob_files(server)) == 1


def test_associate_unsupported_abstract_syntax_context_rejected(server: ServerProc) -> None:
    made_up = "1.2.826.0.1.3680043.8.498.999.1"
    contexts = [(made_up, [ExplicitVRLittleEndian]), (ModalityWorklistInformationFind, [ExplicitVRLittleEndian]),
                (Verification, [ExplicitVRLittleEndian])]
    with association(server, contexts) as assoc:
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        # PS3.8 Table 9-18: result 3 = abstract syntax not supported (provider rejection)
        assert rejected == {made_up: 0x03, str(ModalityWorklistInformationFind): 0x03}
        assert accepted == {str(Verification)}
        assert int(assoc.send_c_echo().Status) == 0x0000


# -- duplicates (PS3.4 B.2.3 warning B006; PS3.7 C.4.2 failure 0111) ---------------------------------------------


def test_c_store_different_payload_keep_first_answers_b006(server: ServerProc, tmp_path: Path) -> None:
    first = fresh_instance(ct_small(), tmp_path / "a")
    assert send(server, first) == [0x0000]
    assert send(server, _altered(first, tmp_path)) == [0xB006]
    (row,) = index(server)
    assert dataset_bytes(row.blob_path) == dataset_bytes(first), "keep-first keeps the first copy"


def test_c_store_different_payload_reject_policy_answers_0111(server_factory: type, tmp_path: Path) -> None:
    server = server_factory({"INTEROP_DICOM__DUPLICATE_POLICY": "reject"})  # type: ignore[operator]
    first = fresh_instance(ct_small(), tmp_path / "a")
    assert send(server, first) == [0x0000]
    assert send(server, _altered(first, tmp_path)) == [0x0111]
    assert send(server, first) == [0x0000], "the identical data set again is still a success"
    (row,) = index(server)
    assert dataset_bytes(row.blob_path) == dataset_bytes(first)
    _assert_still_serving(server)


def test_c_store_different_payload_overwrite_policy_replaces(server_factory: type, tmp_path: Path) -> None:
    server = server_factory({"INTEROP_DICOM__DUPLICATE_POLICY": "overwrite"})  # type: ignore[operator]
    first = fresh_instance(ct_small(), tmp_path / "a")
    altered = _altered(first, tmp_path)
    assert send(server, first, altered) == [0x0000, 0x0000]
    (row,) = index(server)
    assert dataset_bytes(row.blob_path) == dataset_bytes(altered)
    assert len(blob_files(server)) == 1, "the replaced file is deleted"


# -- who may associate ------------------------------------------------------------------------------------------


def test_associate_calling_ae_not_allowed_rejected(server_factory: type) -> None:
    server = server_factory({"INTEROP_DICOM__ALLOWED_AES": '["ORTHANC"]'})  # type: ignore[operator]
    refused = echoscu(server)  # calling AE ECHOSCU
    assert refused.returncode != 0
    text = refused.stdout + refused.stderr
    assert "Association Rejected" in text and "Calling AE Title Not Recognized" in text, text
    allowed = echoscu(server, "-aet", "ORTHANC")
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize(("allowed", "answered"), [("127.0.0.1", True), ("192.0.2.7", False)])
def test_associate_from_address_follows_allowed_hosts(server_factory: type, allowed: str, answered: bool) -> None:
    server = server_factory({"INTEROP_DICOM__ALLOWED_HOSTS": f'["{allowed}"]'})  # type: ignore[operator]
    out = echoscu(server)
    assert (out.returncode == 0) is answered, out.stdout + out.stderr
    if not answered:
        assert "Received Echo Response" not in out.stdout + out.stderr
        with server.client() as http:  # the node itself is fine
            assert http.get("/readyz").status_code == 200


def test_associate_beyond_max_associations_rejected(server_factory: type) -> None:
    server = server_factory({"INTEROP_DICOM__MAX_ASSOCIATIONS": "1"})  # type: ignore[operator]
    with association(server, [(Verification, [ExplicitVRLittleEndian])]) as held:
        refused = echoscu(server)
        assert refused.returncode != 0
        text = refused.stdout + refused.stderr
        assert "Association Rejected" in text and "Local Limit Exceeded" in text, text
        assert int(held.send_c_echo().Status) == 0x0000, "the association already open is unaffected"
    deadline = time.monotonic() + 5
    while (out := echoscu(server)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # the released association's thread ends asynchronously
    assert out.returncode == 0, out.stderr



def test_abort_mid_data_set_leaves_no_partial_file(server: ServerProc) -> None:
    """A peer that aborts (or dies) in the middle of a data set: the partial receive file is removed at once,
    not left in ``blobs/tmp`` until the next restart; nothing is indexed; the node keeps serving."""
    src = sample_file("RG1_UNCI.dcm")  # 7 MB: many P-DATA PDUs
    with association(server, contexts_for(src)) as assoc:
        req = C_STORE()
        req.MessageID, req.Priority = 1, 2
        h = dcmread(src, stop_before_pixels=True)
        req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
        req.DataSet = BytesIO(dataset_bytes(src))
        msg = C_STORE_RQ()
        msg.primitive_to_message(req)
        cx_id = assoc.accepted_contexts[0].context_id
        for n, pdata in enumerate(msg.encode_msg(cx_id, 16384)):
            if n == 20:  # the command and part of the data set are on the wire
                break
            assoc.dul.send_pdu(pdata)
        deadline = time.monotonic() + 5
        while not temp_files(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert temp_files(server), "the node should be receiving into a temporary file"
        assoc.abort()
    deadline = time.monotonic() + 5
    while temp_files(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_files(server) == []
    assert counts(server) == (0, 0, 0)
    _assert_still_serving(server)
