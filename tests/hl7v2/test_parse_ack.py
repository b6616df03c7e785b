"""Reading MSH and the character set (HL7 v2.5.1 §2.14.9), and the ACK we answer with (§2.9.2, §2.15.5)."""

from __future__ import annotations

import pytest

from interop.errors import SegmentError, TableValueNotFound, UndecodableDataset
from interop.hl7v2.ack import Outcome, build_ack
from interop.hl7v2.conformance import check
from interop.hl7v2.parse import decode, parse, read_header
from tests.hl7v2.support import MESSAGES, oru, sample, segments


def test_read_header_routing_fields() -> None:
    h = read_header(sample("oru_r01_cmp.hl7"))
    assert (h.sending_application, h.sending_facility, h.control_id) == ("LAB_LIS", "GENLAB", "LAB20261120-0001")
    assert (h.message_type, h.message_structure, h.version, h.charset) == ("ORU^R01", "ORU_R01", "2.5.1",
                                                                           "UNICODE UTF-8")


def test_read_header_other_delimiters() -> None:
    h = read_header(b"MSH#*~\\&#APP#FAC#####ADT*A08#C9#P#2.4\rPID#1")
    assert (h.field_sep, h.sending_application, h.message_type, h.control_id) == ("#", "APP", "ADT^A08", "C9")


@pytest.mark.parametrize("raw", [b"", b"PID|1||x", b"MSH", b"MSH|\r", b"MSHA^~\\&|x"])
def test_read_header_refuses_without_usable_msh(raw: bytes) -> None:
    with pytest.raises(SegmentError):
        read_header(raw)


def test_decode_non_utf8_bytes_names_the_segment_and_field() -> None:
    raw = oru("U1").replace(b"Doe^Jane", "Dö^Jane".encode("latin-1"))
    with pytest.raises(UndecodableDataset) as info:
        decode(raw, read_header(raw))
    assert info.value.expression == "PID[1]-5" and "0xF6" in info.value.message
    assert info.value.hl7_ack == "AE" and info.value.hl7_error_code == "102"


def test_decode_unknown_charset_is_table_value_not_found() -> None:
    raw = oru("U2").replace(b"|P|2.5.1", b"|P|2.5.1||||||KLINGON", 1)
    with pytest.raises(TableValueNotFound):
        decode(raw, read_header(raw))


def test_parse_accepts_lf_segment_terminators() -> None:
    msg = parse(oru("U3").replace(b"\r", b"\n"))
    assert [s.id for s in msg.segments] == ["MSH", "PID", "OBR", "OBX", "OBX"]
    assert msg.segments[3].ordinal == 1 and msg.segments[4].ordinal == 2


def test_ack_aa_echoes_control_id_and_addresses_the_sender() -> None:
    ack = build_ack(read_header(sample("oru_r01_cmp.hl7")), Outcome("AA"))
    seg = segments(ack)
    assert seg["MSH"][3] == "INTEROP" and (seg["MSH"][5], seg["MSH"][6]) == ("LAB_LIS", "GENLAB")
    assert seg["MSH"][9] == "ACK^R01^ACK" and seg["MSH"][12] == "2.5.1" and seg["MSH"][18] == "UNICODE UTF-8"
    assert seg["MSA"][1:3] == ["AA", "LAB20261120-0001"] and "ERR" not in seg


def test_ack_error_has_err_location_code_severity_and_escaped_text() -> None:
    header = read_header(sample("oru_r01_cmp.hl7"))
    ack = build_ack(header, Outcome("AE", "102", "'a|b^c' is not a number", "OBX[2]-5.1"))
    err = segments(ack)["ERR"]
    assert err[2] == "OBX^2^5^1^1" and err[3] == "102^Data type error^HL70357" and err[4] == "E"
    assert err[8] == "'a\\F\\b\\S\\c' is not a number"


@pytest.mark.parametrize("outcome", [Outcome("AA"), Outcome("AE", "101", "PID-3 is empty", "PID[1]-3"),
                                     Outcome("AR", "200", "message type SIU is not processed here", "MSH[1]-9.1")])
def test_ack_conforms_to_v251_ack_structure(outcome: Outcome) -> None:
    assert check(build_ack(read_header(sample("oru_r01_cmp.hl7")), outcome)) == []


@pytest.mark.parametrize("name", sorted(p.name for p in MESSAGES.glob("*.hl7") if p.name != "orm_o01.hl7"))
def test_sample_messages_conform_to_their_v251_structure(name: str) -> None:
    """hl7apy's full structure check (off the receive path). ORM^O01 is left out: hl7apy models its
    OBR/RQD/RQ1/RXO/ODS/ODT choice as a sequence and asks for every member."""
    assert check(sample(name)) == []
