"""WADO-RS against a running node: instances, metadata, bulk data, frames, rendered (PS3.18 §10.4)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from tests.conftest import ServerProc
from tests.dicomweb.conftest import client, sample_bytes, stow
from tests.support import sample_file

ANY_TS = (("application/dicom", "*"),)


@pytest.fixture(scope="module")
def http(loaded: ServerProc) -> httpx.Client:
    c = loaded.client()
    c.base_url = httpx.URL(loaded.dicomweb_url + "/")
    return c


def _ds(name: str) -> Dataset:
    return dcmread(sample_file(name))


def _path(ds: Dataset) -> str:
    return f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related response by hand (checks the framing dicomweb-client is lenient about)."""
    ct = response.headers["content-type"]
    assert ct.startswith("multipart/related;") and "type=" in ct
    boundary = ct.split("boundary=")[1].split(";")[0].strip('"').encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    out = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append(({k.lower(): v for k, v in headers.items()}, content[:-2]))
    return out


def test_wado_instance_as_stored_is_byte_identical(http: httpx.Client) -> None:
    for name in ("CT_small.dcm", "JPEG2000.dcm", "emri_small.dcm"):
        ds = _ds(name)
        r = http.get(_path(ds), headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert r.status_code == 200
        ((headers, data),) = _parts(r)
        assert data == sample_bytes(name)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"


def test_wado_series_and_study_with_dicomweb_client(loaded: ServerProc, dicomdir_study: list[Path]) -> None:
    first = dcmread(dicomdir_study[0])
    c = client(loaded)
    series = c.retrieve_series(first.StudyInstanceUID, first.SeriesInstanceUID, media_types=ANY_TS)
    expected = {dcmread(p).SOPInstanceUID for p in dicomdir_study if dcmread(p).SeriesInstanceUID ==
                first.SeriesInstanceUID}
    assert {ds.SOPInstanceUID for ds in series} == expected
    study = c.retrieve_study(first.StudyInstanceUID, media_types=ANY_TS)
    in_study = [p for p in dicomdir_study if dcmread(p).StudyInstanceUID == first.StudyInstanceUID]
    assert {ds.SOPInstanceUID for ds in study} == {dcmread(p).SOPInstanceUID for p in in_study}


def test_wado_default_transfer_syntax_is_explicit_little_endian(loaded: ServerProc) -> None:
    src = _ds("JPEG2000.dcm")
    c = client(loaded)
    for media_types in (("application/dicom",), (("application/dicom", "1.2.840.10008.1.2.1"),)):
        # no transfer-syntax parameter means the default (PS3.18 §8.7.3.5.2), so the stored JPEG 2000 is decoded
        got = c.retrieve_instance(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID,
                                  media_types=media_types)
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert np.array_equal(got.pixel_array, src.pixel_array)


def test_wado_transfer_syntax_we_cannot_make_is_406(http: httpx.Client) -> None:
    ct = _ds("CT_small.dcm")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert http.get(_path(ct), headers={"Accept": accept}).status_code == 406
    assert http.get(_path(ct), headers={"Accept": "text/html"}).status_code == 406


def test_wado_unknown_uids_are_404_operation_outcome(http: httpx.Client) -> None:
    ct = _ds("CT_small.dcm")
    for path in ("studies/1.2.3", f"studies/{ct.StudyInstanceUID}/series/1.2.3",
                 f"studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/1.2.3/metadata",
                 "studies/1.2.3/metadata", f"{_path(ct)}/frames/2", f"{_path(_ds('test-SR.dcm'))}/rendered"):
        r = http.get(path)
        assert r.status_code == 404, path
        assert r.json()["resourceType"] == "OperationOutcome"


def test_wado_metadata_has_bulk_data_uri_that_returns_the_pixels(loaded: ServerProc, http: httpx.Client) -> None:
    ct = _ds("CT_small.dcm")
    c = client(loaded)
    (meta,) = c.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID),
    assert meta["00080018"]["Value"] == [ct.SOPInstanceUID]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert meta["7FE00010"]["vr"] == "OW"
    (pixels,) = c.retrieve_bulkdata(uri)
    assert pixels == ct.PixelData
    for item in meta.values():
        assert len(item.get("InlineBinary", "")) <= 2048
    study = http.get(f"studies/{ct.StudyInstanceUID}/metadata")
    assert study.headers["content-type"] == "application/dicom+json"
    assert [m["00080018"]["Value"][0] for m in study.json()] == [ct.SOPInstanceUID]


def test_wado_metadata_of_encapsulated_and_non_image(http: httpx.Client) -> None:
    sr = _ds("test-SR.dcm")
    (meta,) = http.get(f"{_path(sr)}/metadata").json()
    assert "7FE00010" not in meta and meta["0040A730"]["vr"] == "SQ"
    j2k = _ds("JPEG2000.dcm")
    (meta,) = http.get(f"{_path(j2k)}/metadata").json()
    assert meta["7FE00010"]["vr"] == "OB" and "BulkDataURI" in meta["7FE00010"]


def test_wado_frames_native_multiframe(loaded: ServerProc, http: httpx.Client) -> None:
    src = _ds("emri_small.dcm")
    size = src.Rows * src.Columns * src.BitsAllocated // 8
    frames = client(loaded).retrieve_instance_frames(src.StudyInstanceUID, src.SeriesInstanceUID,
                                                     src.SOPInstanceUID, [1, 3, 10])
    assert frames == [src.PixelData[(n - 1) * size: n * size] for n in (1, 3, 10)]
    r = http.get(f"{_path(src)}/frames/2", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    ((headers, data),) = _parts(r)
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert data == src.PixelData[size: 2 * size]
    assert http.get(f"{_path(src)}/frames/11").status_code == 404
    assert http.get(f"{_path(src)}/frames/x").status_code == 400


def test_wado_frames_jpeg2000_as_stored_or_decoded(loaded: ServerProc, http: httpx.Client) -> None:
    src = _ds("JPEG2000.dcm")
    stored = next(generate_frames(src.PixelData, number_of_frames=1))
    c = client(loaded)
    (compressed,) = c.retrieve_instance_frames(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID, [1],
                                               media_types=(("image/jp2", "1.2.840.10008.1.2.4.91"),))
    assert compressed == stored
    ohif = 'multipart/related; type=application/octet-stream; transfer-syntax=*'
    ((headers, data),) = _parts(http.get(f"{_path(src)}/frames/1", headers={"Accept": ohif}))
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert data == stored
    (decoded,) = c.retrieve_instance_frames(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID, [1])
    assert decoded == src.pixel_array.astype("<i2").tobytes()
    jpeg = 'multipart/related; type="image/jpeg"'
    assert http.get(f"{_path(src)}/frames/1", headers={"Accept": jpeg}).status_code == 406


def test_wado_rendered_jpeg_and_png_have_the_image_size(http: httpx.Client) -> None:
    for name in ("CT_small.dcm", "JPEG2000.dcm", "US1_J2KR.dcm", "emri_small.dcm"):
        src = _ds(name)
        r = http.get(f"{_path(src)}/rendered")
        assert r.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(r.content))
        assert (image.format, image.size) == ("JPEG", (src.Columns, src.Rows)), name
        png = http.get(f"{_path(src)}/rendered", headers={"Accept": "image/png"})
        assert Image.open(io.BytesIO(png.content)).format == "PNG"
    assert Image.open(io.BytesIO(http.get(f"{_path(_ds('US1_J2KR.dcm'))}/rendered").content)).mode == "RGB"


def test_wado_rendered_window_viewport_and_frames(http: httpx.Client) -> None:
    ct = _ds("CT_small.dcm")
    narrow = http.get(f"{_path(ct)}/rendered", params={"window": "40,80,linear", "accept": "image/png"})
    wide = http.get(f"{_path(ct)}/rendered", params={"window": "40,4000", "accept": "image/png"})
    a = np.asarray(Image.open(io.BytesIO(narrow.content)))
    b = np.asarray(Image.open(io.BytesIO(wide.content)))
    assert a.std() > b.std()
    small = http.get(f"{_path(ct)}/rendered", params={"viewport": "64,32"})
    assert Image.open(io.BytesIO(small.content)).size == (32, 32)
    mr = _ds("emri_small.dcm")
    frame = http.get(f"{_path(mr)}/frames/5/rendered")
    assert Image.open(io.BytesIO(frame.content)).size == (mr.Columns, mr.Rows)
    assert http.get(f"{_path(ct)}/rendered", params={"window": "40"}).status_code == 400
    assert http.get(f"{_path(ct)}/rendered", headers={"Accept": "image/gif"}).status_code == 406


def test_wado_rendered_images_are_cacheable_and_revalidate_with_304(http: httpx.Client) -> None:
    """Moving back to a case re-asks for the same images: the browser may keep them (private, for a while),
    then revalidates by ETag and gets 304 with no body and no rendering; another option is another ETag."""
    ct = _ds("CT_small.dcm")
    first = http.get(f"{_path(ct)}/rendered")
    etag = first.headers["etag"]
    assert first.status_code == 200 and first.headers["cache-control"].startswith("private, max-age=")
    again = http.get(f"{_path(ct)}/rendered", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    png = http.get(f"{_path(ct)}/rendered", headers={"Accept": "image/png", "If-None-Match": etag})
    assert png.status_code == 200 and png.headers["etag"] != etag  # another rendering, another validator
    small = http.get(f"{_path(ct)}/rendered", params={"viewport": "64,64"}, headers={"If-None-Match": etag})
    assert small.status_code == 200 and Image.open(io.BytesIO(small.content)).size == (64, 64)
    assert http.get(f"{_path(ct)}/thumbnail", headers={"If-None-Match": etag}).status_code == 200


def test_wado_thumbnails_and_rendered_series(http: httpx.Client, dicomdir_study: list[Path]) -> None:
    ds = dcmread(dicomdir_study[0], stop_before_pixels=True)
    for path in (f"studies/{ds.StudyInstanceUID}/thumbnail",
                 f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"):
        image = Image.open(io.BytesIO(http.get(path).content))
        assert max(image.size) == 128
    r = http.get(f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/rendered")
    parts = _parts(r)
    n = sum(dcmread(p, stop_before_pixels=True).SeriesInstanceUID == ds.SeriesInstanceUID for p in dicomdir_study)
    assert len(parts) == n and all(h["content-type"] == "image/jpeg" for h, _ in parts)


def test_wado_big_endian_instance_is_converted_for_default_accept(web: ServerProc) -> None:
    src = _ds("MR_small_bigendian.dcm")
    assert stow(web, [sample_bytes("MR_small_bigendian.dcm")]).status_code == 200
    got = client(web).retrieve_instance(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID,
                                        media_types=("application/dicom",))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, src.pixel_array)
    (frame,) = client(web).retrieve_instance_frames(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID,
                                                    [1])
    assert frame == src.pixel_array.astype("<i2").tobytes()
