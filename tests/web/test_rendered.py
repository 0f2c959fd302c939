"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.4, 8.3.5.1)
through the real server: rendered pixels checked against pydicom's own pipeline, the
rendering parameters, thumbnails, multipart answers, caching and every refusal."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import generate_uid

from tests.web.conftest import WebServer, start_web, web_settings

TEST_FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
#: A computed radiography image with MONOCHROME1 (16×16, window in the file).
MONOCHROME1_FILE = TEST_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"
PNG = {"Accept": "image/png"}


def bundled(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, name
    return Path(found)


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def instance_path(path: Path) -> str:
    study, series, sop = uids(path)
    return f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"


def png_pixels(body: bytes) -> npt.NDArray[np.uint8]:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG"
    return np.asarray(image)


def image_size(body: bytes) -> tuple[int, int]:
    width, height = Image.open(io.BytesIO(body)).size
    return width, height


def scale(values: npt.NDArray[np.float64], lo: float, hi: float) -> npt.NDArray[np.uint8]:
    """The 8-bit scaling dicom/render.py defines: clip(rint((y-lo)/(hi-lo)*255))."""
    return np.clip(np.rint((values - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def windowed_oracle(ds: pydicom.Dataset, frame: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """pydicom's Modality LUT + first VOI, scaled to 8 bits over the window's output
    range (PS3.3 C.11.2.1.2: the Modality LUT's output range)."""
    values = apply_voi_lut(apply_modality_lut(frame, ds), ds, index=0)
    bits = int(ds.BitsStored)
    lo, hi = (
        (0.0, 2.0**bits - 1)
        if ds.PixelRepresentation == 0
        else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    )
    if "RescaleSlope" in ds:
        lo = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        hi = hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return scale(values, lo, hi)


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related answer into (headers, payload) parts (RFC 2046 5.1.1)."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    found = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, payload = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert payload.endswith(b"\r\n")
        found.append((headers, payload[:-2]))
    return found


def ct_copy(
    tmp: Path, name: str, *, study: str, series: str, series_number: int, number: int
) -> Path:
    """CT_small with new UIDs, numbers, and pixels shifted by ``number`` so each copy
    renders differently."""
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    pixels = ds.pixel_array.astype(np.int16)
    pixels[: number * 10, :] = 2000  # a bright band whose height names the instance
    ds.PixelData = pixels.tobytes()
    path = tmp / name
    ds.save_as(path, enforce_file_format=True)
    return path


# -- one server with every kind of image -------------------------------------------------

FILES = {
    "ct": "CT_small.dcm",
    "mr": "MR_small.dcm",
    "rgb": "examples_rgb_color.dcm",
    "ybr_jpeg": "SC_rgb_jpeg_dcmtk.dcm",
    "rgb_reference": "SC_rgb_jpeg_gdcm.dcm",
    "palette": "examples_palette.dcm",
    "multiframe": "rtdose.dcm",
    "ybr_cine": "examples_ybr_color.dcm",
    "no_pixels": "rtplan.dcm",
    "jpeg_12bit": "JPGExtended.dcm",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    tmp = tmp_path_factory.mktemp("rendered")
    for web in start_web(web_settings(tmp)):
        for name in [*FILES.values(), str(MONOCHROME1_FILE)]:
            source = Path(name) if name.startswith("/") else bundled(name)
            copy = tmp / source.name
            shutil.copyfile(source, copy)
            web.archive.store_file(copy)
        yield web


def path_of(key: str) -> Path:
    return MONOCHROME1_FILE if key == "mono1" else bundled(FILES[key])


def get(web: WebServer, key: str, suffix: str = "/rendered", **kwargs: Any) -> httpx.Response:
    return web.client.get(instance_path(path_of(key)) + suffix, **kwargs)


# -- pixels --------------------------------------------------------------------------------


def test_ct_without_window_is_scaled_min_to_max(server: WebServer) -> None:
    response = get(server, "ct", headers=PNG)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    ds = pydicom.dcmread(path_of("ct"))
    values = apply_modality_lut(ds.pixel_array, ds)
    expected = scale(values, float(values.min()), float(values.max()))
    assert np.array_equal(png_pixels(response.content), expected)


def test_mr_uses_its_own_window(server: WebServer) -> None:
    response = get(server, "mr", headers=PNG)
    ds = pydicom.dcmread(path_of("mr"))
    assert "WindowCenter" in ds
    expected = windowed_oracle(ds, ds.pixel_array)
    assert np.array_equal(png_pixels(response.content), expected)


@pytest.mark.parametrize("function", ["linear", "linear-exact", "sigmoid"])
def test_window_parameter_replaces_the_image_window(server: WebServer, function: str) -> None:
    response = get(server, "ct", params={"window": f"40,400,{function}"}, headers=PNG)
    assert response.status_code == 200
    ds = pydicom.dcmread(path_of("ct"))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.VOILUTFunction = function.upper().replace("-", "_")
    expected = windowed_oracle(ds, ds.pixel_array)
    assert np.array_equal(png_pixels(response.content), expected)


def test_narrow_window_saturates_more(server: WebServer) -> None:
    wide = png_pixels(get(server, "ct", params={"window": "40,4000"}, headers=PNG).content)
    narrow = png_pixels(get(server, "ct", params={"window": "40,40"}, headers=PNG).content)
    saturated = lambda a: int(np.sum((a == 0) | (a == 255)))  # noqa: E731
    assert saturated(narrow) > saturated(wide)


def test_monochrome1_is_inverted(server: WebServer) -> None:
    ds = pydicom.dcmread(MONOCHROME1_FILE)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    got = png_pixels(get(server, "mono1", headers=PNG).content)
    assert np.array_equal(got, 255 - windowed_oracle(ds, ds.pixel_array))


def test_rgb_is_kept(server: WebServer) -> None:
    got = png_pixels(get(server, "rgb", headers=PNG).content)
    assert np.array_equal(got, pydicom.dcmread(path_of("rgb")).pixel_array)


def test_ybr_jpeg_comes_out_as_rgb(server: WebServer) -> None:
    ds = pydicom.dcmread(path_of("ybr_jpeg"))
    assert ds.PhotometricInterpretation == "YBR_FULL"
    got = png_pixels(get(server, "ybr_jpeg", headers=PNG).content).astype(int)
    reference = pydicom.dcmread(path_of("rgb_reference")).pixel_array.astype(int)
    assert np.abs(got - reference).max() <= 8  # same picture, lossy-coded once more
    assert tuple(got[0, 0]) == pytest.approx((255, 0, 0), abs=8)


def test_palette_color_goes_through_the_palette(server: WebServer) -> None:
    ds = pydicom.dcmread(path_of("palette"))
    got = png_pixels(get(server, "palette", headers=PNG).content)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    expected = scale(apply_color_lut(ds.pixel_array, ds).astype(np.float64), 0, 2.0**bits - 1)
    assert got.shape == (350, 800, 3)
    assert np.array_equal(got, expected)


# -- frames and multi-frame instances ------------------------------------------------------


def test_frame_rendered_and_instance_is_frame_one(server: WebServer) -> None:
    ds = pydicom.dcmread(path_of("multiframe"))
    frames = ds.pixel_array
    third = png_pixels(get(server, "multiframe", "/frames/3/rendered", headers=PNG).content)
    assert np.array_equal(third, minmax_oracle(ds, frames[2]))
    first = png_pixels(get(server, "multiframe", headers=PNG).content)
    assert np.array_equal(first, minmax_oracle(ds, frames[0]))


def minmax_oracle(ds: pydicom.Dataset, frame: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    values = apply_modality_lut(frame, ds)
    return scale(values, float(values.min()), float(values.max()))


def test_several_frames_are_multipart(server: WebServer) -> None:
    response = get(server, "ybr_cine", "/frames/1,5,30/rendered")
    assert response.status_code == 200
    assert 'type="image/jpeg"' in response.headers["content-type"]
    found = parts(response)
    assert len(found) == 3
    for (headers, payload), frame in zip(found, (1, 5, 30), strict=True):
        assert headers["content-type"] == "image/jpeg"
        assert headers["content-location"].endswith(f"/frames/{frame}/rendered")
        assert Image.open(io.BytesIO(payload)).size == (320, 240)


@pytest.mark.parametrize("frames", ["0", "16", "1,16", "x", "1,,2"])
def test_bad_frame_numbers_are_400(server: WebServer, frames: str) -> None:
    response = get(server, "multiframe", f"/frames/{frames}/rendered")
    assert response.status_code == 400
    body = response.json()
    assert body["parameter"] == "frame"
    assert "frame" in body["message"]


def test_frame_of_a_single_frame_image(server: WebServer) -> None:
    assert get(server, "ct", "/frames/1/rendered").status_code == 200
    assert get(server, "ct", "/frames/2/rendered").status_code == 400


# -- viewport, quality, media types --------------------------------------------------------


@pytest.mark.parametrize(
    ("viewport", "size"),
    [
        ("64,32", (32, 32)),  # fits the smaller side, keeps the aspect ratio
        ("256,512", (256, 256)),  # scales up to fit
        ("128,128", (128, 128)),
        ("100,100,0,0,64,32", (100, 50)),  # source region cut out first
        ("32,32,,,64,", (16, 32)),  # empty values take their defaults: 64×128
    ],
)
def test_viewport_sizes(server: WebServer, viewport: str, size: tuple[int, int]) -> None:
    response = get(server, "ct", params={"viewport": viewport})
    assert response.status_code == 200, response.text
    assert image_size(response.content) == size


def test_viewport_region_is_the_crop(server: WebServer) -> None:
    whole = png_pixels(get(server, "rgb", headers=PNG).content)
    region = png_pixels(
        get(server, "rgb", params={"viewport": "40,30,10,20,40,30"}, headers=PNG).content
    )
    assert np.array_equal(region, whole[20:50, 10:50])
    flipped = png_pixels(
        get(server, "rgb", params={"viewport": "40,30,50,20,-40,30"}, headers=PNG).content
    )
    assert np.array_equal(flipped, whole[20:50, 10:50][:, ::-1])


def test_quality_changes_jpeg_size(server: WebServer) -> None:
    low = get(server, "rgb", params={"quality": "5"})
    high = get(server, "rgb", params={"quality": "95"})
    assert low.headers["content-type"] == high.headers["content-type"] == "image/jpeg"
    assert len(low.content) < len(high.content) / 2
    assert Image.open(io.BytesIO(low.content)).format == "JPEG"


def test_accept_query_parameter_and_default(server: WebServer) -> None:
    assert get(server, "ct").headers["content-type"] == "image/jpeg"
    by_query = get(server, "ct", params={"accept": "image/png"}, headers={"Accept": "image/jpeg"})
    assert by_query.headers["content-type"] == "image/png"
    wildcard = get(server, "ct", headers={"Accept": "image/*"})
    assert wildcard.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(
    "accept", ["image/gif", "application/dicom", 'multipart/related; type="image/png"']
)
def test_unavailable_media_types_are_406(server: WebServer, accept: str) -> None:
    response = get(server, "ct", headers={"Accept": accept})
    assert response.status_code == 406
    body = response.json()
    assert body["available"] == ["image/jpeg", "image/png"]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"window": "40,0"}, "window"),
        ({"window": "40,-5,linear"}, "window"),
        ({"window": "40,0.5,linear"}, "window"),
        ({"window": "40,400,cubic"}, "window"),
        ({"window": "abc,400"}, "window"),
        ({"window": "40"}, "window"),
        ({"viewport": "abc,10"}, "viewport"),
        ({"viewport": "0,10"}, "viewport"),
        ({"viewport": "10,10,0,0"}, "viewport"),
        ({"viewport": "10,10,0,0,0,5"}, "viewport"),
        ({"viewport": "10,10,100,0,64,64"}, "viewport"),  # region leaves the image
        ({"quality": "0"}, "quality"),
        ({"quality": "101"}, "quality"),
        ({"quality": "high"}, "quality"),
        ({"quality": ["50", "60"]}, "quality"),
    ],
)
def test_bad_parameters_are_400(
    server: WebServer, params: dict[str, object], parameter: str
) -> None:
    for suffix in ("/rendered", "/thumbnail"):
        response = get(server, "ct", suffix, params=params)
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["parameter"] == parameter
        assert body["message"].startswith(parameter)


def test_not_an_image_and_undecodable_are_406(server: WebServer) -> None:
    response = get(server, "no_pixels")
    assert response.status_code == 406
    assert response.json()["reason"] == "not-an-image"
    response = get(server, "jpeg_12bit")
    assert response.status_code == 406
    body = response.json()
    assert body["reason"] == "cannot-decode"
    assert "1.2.840.10008.1.2.4.51" in body["message"]


def test_unknown_and_malformed_uids(server: WebServer) -> None:
    study, series, sop = uids(path_of("ct"))
    base = "/dicom-web/studies"
    unknown = server.client.get(f"{base}/{study}/series/{series}/instances/1.2.3.4/rendered")
    assert unknown.status_code == 404
    assert unknown.json()["status"] == 404
    other_series = server.client.get(f"{base}/{study}/series/1.2.3/instances/{sop}/rendered")
    assert other_series.status_code == 404
    assert server.client.get(f"{base}/1.2.3/thumbnail").status_code == 404
    assert server.client.get(f"{base}/{study}/series/1.2.3/rendered").status_code == 404
    bad = server.client.get(f"{base}/{study}/series/{series}/instances/1.2.abc/rendered")
    assert bad.status_code == 400
    assert bad.json()["parameter"] == "SOPInstanceUID"


# -- caching ------------------------------------------------------------------------------


def test_etag_and_304(server: WebServer) -> None:
    first = get(server, "ct", params={"viewport": "64,64"})
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    again = get(server, "ct", params={"viewport": "64,64"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = get(server, "ct", params={"viewport": "32,32"}, headers={"If-None-Match": etag})
    assert other.status_code == 200
    assert other.headers["etag"] != etag
    png = get(server, "ct", params={"viewport": "64,64"}, headers={**PNG, "If-None-Match": etag})
    assert png.status_code == 200


# -- thumbnails ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "params", "size"),
    [
        ("ct", {}, (128, 128)),
        ("rgb", {}, (128, 96)),  # 320×240 fits in 128×128
        ("mr", {}, (64, 64)),  # never enlarged by default
        ("rgb", {"viewport": "64,64"}, (64, 48)),
        ("mr", {"viewport": "200,100"}, (100, 100)),  # an explicit viewport may enlarge
    ],
)
def test_instance_thumbnail_sizes(
    server: WebServer, key: str, params: dict[str, str], size: tuple[int, int]
) -> None:
    response = get(server, key, "/thumbnail", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert image_size(response.content) == size


def test_multiframe_thumbnail_is_the_middle_frame(server: WebServer) -> None:
    thumbnail = get(server, "multiframe", "/thumbnail", params={"viewport": "10,10"}, headers=PNG)
    middle = get(server, "multiframe", "/frames/8/rendered", headers=PNG)
    assert thumbnail.content == middle.content
    frame = get(
        server, "multiframe", "/frames/2/thumbnail", params={"viewport": "10,10"}, headers=PNG
    )
    assert frame.content == get(server, "multiframe", "/frames/2/rendered", headers=PNG).content
    assert get(server, "multiframe", "/frames/1,2/thumbnail").status_code == 400


# -- study and series resources --------------------------------------------------------------

STUDY = "1.2.826.0.1.3680043.8.498.4711"
SERIES_2 = STUDY + ".2"
SERIES_1 = STUDY + ".1"


@pytest.fixture
def study_server(tmp_path: Path, backend: str) -> Iterator[WebServer]:
    """A study of two series: series number 2 stored first (3 instances, stored in the
    order 3, 1, 2), then series number 1 (2 instances) and an RT Plan (no pixels); on
    both index backends, whose C-FIND answers give the order."""
    for web in start_web(web_settings(tmp_path, backend)):
        for number in (3, 1, 2):
            web.archive.store_file(
                ct_copy(
                    tmp_path,
                    f"s2-{number}.dcm",
                    study=STUDY,
                    series=SERIES_2,
                    series_number=2,
                    number=number,
                )
            )
        for number in (2, 1):
            web.archive.store_file(
                ct_copy(
                    tmp_path,
                    f"s1-{number}.dcm",
                    study=STUDY,
                    series=SERIES_1,
                    series_number=1,
                    number=number,
                )
            )
        plan = pydicom.dcmread(bundled("rtplan.dcm"))
        plan.StudyInstanceUID = STUDY
        plan.save_as(tmp_path / "plan.dcm")
        web.archive.store_file(tmp_path / "plan.dcm")
        yield web


def sop_of(web: WebServer, series: str, number: int) -> str:
    for path in Path(web.settings.storage.path).parent.glob("s*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SeriesInstanceUID == series and ds.InstanceNumber == number:
            return str(ds.SOPInstanceUID)
    raise AssertionError((series, number))


def test_rendered_series_in_instance_number_order(study_server: WebServer) -> None:
    response = study_server.client.get(
        f"/dicom-web/studies/{STUDY}/series/{SERIES_2}/rendered", headers={"Accept": "image/png"}
    )
    assert response.status_code == 200
    assert 'type="image/png"' in response.headers["content-type"]
    found = parts(response)
    assert [h["content-location"].split("/")[-2] for h, _ in found] == [
        sop_of(study_server, SERIES_2, n) for n in (1, 2, 3)
    ]
    for number, (_, payload) in enumerate(found, start=1):
        # the bright band's height tells which instance this is
        column = png_pixels(payload)[:, 0]
        assert int(np.argmax(column != column[0])) == number * 10


def test_rendered_study_skips_non_images(study_server: WebServer) -> None:
    response = study_server.client.get(
        f"/dicom-web/studies/{STUDY}/rendered",
        headers={"Accept": 'multipart/related; type="image/jpeg"'},
    )
    assert response.status_code == 200
    found = parts(response)
    locations = [h["content-location"] for h, _ in found]
    assert len(locations) == 5  # the RT Plan is not an image
    assert all(f"/series/{SERIES_1}/" in loc for loc in locations[:2])  # Series Number 1 first
    again = study_server.client.get(
        f"/dicom-web/studies/{STUDY}/rendered",
        headers={"If-None-Match": response.headers["etag"]},
    )
    assert again.status_code == 304


def test_series_and_study_thumbnails(study_server: WebServer) -> None:
    base = f"/dicom-web/studies/{STUDY}"
    series = study_server.client.get(f"{base}/series/{SERIES_2}/thumbnail", headers=PNG)
    middle = sop_of(study_server, SERIES_2, 2)
    instance = study_server.client.get(
        f"{base}/series/{SERIES_2}/instances/{middle}/rendered",
        params={"viewport": "128,128"},
        headers=PNG,
    )
    assert series.status_code == 200
    assert series.content == instance.content
    study = study_server.client.get(f"{base}/thumbnail", headers=PNG)
    first_series_middle = sop_of(study_server, SERIES_1, 1)  # (2 - 1) // 2 → the first of 2
    expected = study_server.client.get(
        f"{base}/series/{SERIES_1}/instances/{first_series_middle}/thumbnail", headers=PNG
    )
    assert study.content == expected.content
    assert image_size(study.content) == (128, 128)


def test_dicomweb_client_reads_rendered_resources(study_server: WebServer) -> None:
    client = DICOMwebClient(url=study_server.dicomweb)
    sop = sop_of(study_server, SERIES_1, 1)
    jpeg = client.retrieve_instance_rendered(STUDY, SERIES_1, sop, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).size == (128, 128)
    frames = client.retrieve_instance_frames_rendered(
        STUDY, SERIES_1, sop, [1], media_types=("image/png",), params={"viewport": "32,32"}
    )
    assert image_size(frames) == (32, 32)
