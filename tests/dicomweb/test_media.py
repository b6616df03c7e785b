"""Accept negotiation and multipart parsing, without a server (PS3.18 §8.7, RFC 2046/2387)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interop.dicomweb.media import (
    EXPLICIT_VR_LE,
    dicom_transfer_syntax,
    parse_accept,
    pixel_plan,
    rendered_media_type,
    stow_boundary,
)
from interop.dicomweb.multipart import MultipartReceiver, Part, multipart_body
from interop.errors import InvalidInput, NotAcceptable, UnsupportedMediaType

J2K = "1.2.840.10008.1.2.4.91"


def test_parse_accept_orders_by_quality_and_keeps_quoted_commas() -> None:
    ranges = parse_accept('image/png;q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*, */*;q=0')
    assert [r.type for r in ranges] == ["multipart/related", "image/png"]
    assert ranges[0].part_type == "application/dicom" and ranges[0].transfer_syntax == "*"
    assert [r.type for r in parse_accept(None)] == ["*/*"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, EXPLICIT_VR_LE),
        ('multipart/related; type="application/dicom"', EXPLICIT_VR_LE),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', None),
        (f'multipart/related; type="application/dicom"; transfer-syntax={J2K}', J2K),
        ("application/dicom", EXPLICIT_VR_LE),
    ],
)
def test_dicom_transfer_syntax(accept: str | None, expected: str | None) -> None:
    assert dicom_transfer_syntax(parse_accept(accept)) == expected


def test_dicom_transfer_syntax_refuses_other_media_types() -> None:
    with pytest.raises(NotAcceptable):
        dicom_transfer_syntax(parse_accept('multipart/related; type="application/octet-stream"'))


@pytest.mark.parametrize(
    ("accept", "stored", "media_type", "ts", "decode"),
    [
        (None, EXPLICIT_VR_LE, "application/octet-stream", EXPLICIT_VR_LE, False),
        (None, J2K, "application/octet-stream", EXPLICIT_VR_LE, True),
        ('multipart/related; type="*/*"', J2K, "application/octet-stream", EXPLICIT_VR_LE, True),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", J2K, "application/octet-stream",
         J2K, False),
        ('multipart/related; type="image/jp2"', J2K, "image/jp2", J2K, False),
        ('multipart/related; type="*/*"; transfer-syntax=*', J2K, "image/jp2", J2K, False),
        ('multipart/related; type="image/jpeg", multipart/related; type="application/octet-stream"', J2K,
         "application/octet-stream", EXPLICIT_VR_LE, True),
    ],
)
def test_pixel_plan(accept: str | None, stored: str, media_type: str, ts: str, decode: bool) -> None:
    plan = pixel_plan(parse_accept(accept), stored)
    assert plan is not None
    assert (plan.media_type, plan.transfer_syntax, plan.decode) == (media_type, ts, decode)


def test_pixel_plan_none_when_nothing_fits() -> None:
    assert pixel_plan(parse_accept('multipart/related; type="image/jpeg"'), EXPLICIT_VR_LE) is None
    assert pixel_plan(parse_accept('multipart/related; type="image/jpeg"'), J2K) is None


def test_rendered_media_type() -> None:
    assert rendered_media_type(parse_accept(None)) == "image/jpeg"
    assert rendered_media_type(parse_accept("image/png, image/jpeg;q=0.5")) == "image/png"
    assert rendered_media_type(parse_accept("image/gif")) is None


def test_stow_boundary_statuses() -> None:
    assert stow_boundary('multipart/related; type="application/dicom"; boundary="a b"') == b"a b"
    assert stow_boundary("multipart/related; boundary=xyz") == b"xyz"
    for bad in (None, "application/dicom", 'multipart/related; type="application/dicom+xml"; boundary=x'):
        with pytest.raises(UnsupportedMediaType):
            stow_boundary(bad)
    with pytest.raises(InvalidInput) as err:
        stow_boundary('multipart/related; type="application/dicom"')
    assert err.value.http_status == 400


def _body(parts: list[bytes], boundary: str = "bnd") -> bytes:
    return b"".join(multipart_body([Part("application/dicom", [p]) for p in parts], boundary))


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_receiver_writes_each_part_to_a_file_whatever_the_chunking(tmp_path: Path, step: int) -> None:
    payloads = [b"first\r\n--bn not a boundary", b"", bytes(range(256)) * 40]
    body = b"a preamble line\r\n" + _body(payloads) + b"epilogue"
    receiver = MultipartReceiver(b"bnd", tmp_path)
    for i in range(0, len(body), step):
        receiver.feed(body[i: i + step])
    parts = receiver.close()
    assert [p.path.read_bytes() for p in parts] == payloads
    assert all(p.content_type == "application/dicom" for p in parts)
    receiver.discard()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("body", [b"no boundary at all", _body([b"x"])[:-12], b"--bnd\r\nbroken"])
def test_receiver_refuses_bodies_that_are_not_whole_multipart(tmp_path: Path, body: bytes) -> None:
    receiver = MultipartReceiver(b"bnd", tmp_path)
    with pytest.raises(InvalidInput):
        receiver.feed(body)
        receiver.close()
    receiver.discard()
    assert not any(tmp_path.iterdir())
