"""IndexRecord.metadata_json: the DICOM JSON Model (PS3.18 F.2) without bulk data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomvault.dicom import parse_instance
from dicomvault.model.errors import InvalidInstance
from tests.dicom.files import (
    bundled_file,
    deliberately_invalid,
    minimal_dataset,
    patch_bytes,
    write_part10,
)

BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


def _strict(text: str) -> dict[str, Any]:
    """Parse as RFC 8259 JSON: NaN/Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"non-JSON constant {name}")

    model: dict[str, Any] = json.loads(text, parse_constant=refuse)
    return model


def _model(
    tmp_path: Path, ds: Dataset, ts: str = ExplicitVRLittleEndian, threshold: int = 1024
) -> dict[str, Any]:
    path = write_part10(tmp_path / "j.dcm", ds, ts)
    return _strict(parse_instance(path, bulk_data_threshold=threshold).record.metadata_json)


def _comparable(value: Any) -> Any:
    if isinstance(value, pydicom.multival.MultiValue | list):
        return [_comparable(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, pydicom.valuerep.PersonName):
        return str(value).rstrip("=")
    if isinstance(value, str):
        return value.strip(" ")
    return "" if value is None else value


def _same_non_bulk(original: Dataset, back: Dataset, where: str = "") -> list[str]:
    """Differences between two data sets, ignoring bulk data, group lengths, file meta
    and private elements whose VR only a private dictionary knows."""
    problems = []
    for element in original:
        tag = element.tag
        if tag.group in (0, 2) or tag.element == 0 or tag.is_private:
            continue
        if element.VR in BINARY_VRS or tag == 0x7FE00010:
            continue
        if tag not in back:
            problems.append(f"{where}{tag} missing")
            continue
        other = back[tag]
        if element.VR == "SQ":
            if len(element.value) != len(other.value):
                problems.append(f"{where}{tag} has {len(other.value)} items")
                continue
            for index, (a, b) in enumerate(zip(element.value, other.value, strict=True)):
                problems += _same_non_bulk(a, b, f"{where}{tag}/{index}/")
            continue
        if len(str(element.value)) > 1024:
            continue  # bulk by the threshold
        if _comparable(element.value) != _comparable(other.value) and not (
            _comparable(element.value) in ("", []) and _comparable(other.value) in ("", [])
        ):
            problems.append(f"{where}{tag} {element.VR} {element.value!r} != {other.value!r}")
    return problems


def _parseable_bundled_files() -> list[Path]:
    folder = bundled_file("CT_small.dcm").parent
    files = sorted(folder.glob("*.dcm")) + sorted(bundled_file("chrH31.dcm").parent.glob("*.dcm"))
    usable = []
    for path in files:
        try:
            parse_instance(path)
        except InvalidInstance:
            continue
        usable.append(path)
    return usable


BUNDLED = _parseable_bundled_files()


def test_enough_bundled_files_are_parsed() -> None:
    assert len(BUNDLED) >= 50


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_round_trip_through_pydicom_from_json(path: Path) -> None:
    record = parse_instance(path).record
    model = _strict(record.metadata_json)
    # Exactly what json.dumps would write for the same model, compact.
    assert record.metadata_json == json.dumps(model, separators=(",", ":"), ensure_ascii=False)
    assert all(len(key) == 8 and key == key.upper() for key in model)
    assert list(model) == sorted(model)
    assert not any(key.startswith("0002") for key in model)
    with deliberately_invalid():  # pydicom's own samples break some VRs
        original = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        back = Dataset.from_json(
            record.metadata_json, bulk_data_uri_handler=lambda tag, vr, uri: b""
        )
        assert _same_non_bulk(original, back) == []


def test_value_forms(tmp_path: Path) -> None:
    ds = minimal_dataset(
        PatientName="Yamada^Tarou",
        ImageType=["ORIGINAL", "", "AXIAL"],
        SliceThickness="2.50",
        PixelSpacing=["0.5", "0.25"],
        InstanceNumber="12",
        PatientBirthDate="",
        Rows=512,
        SmallestImagePixelValue=0,
        FrameIncrementPointer=0x00181063,
        ReferencedImageSequence=Sequence(),
    )
    ds.add_new(0x00181063, "DS", "33.3")  # Frame Time
    ds.add_new(0x00189327, "FD", 1.25)  # Table Position
    model = _model(tmp_path, ds)
    assert model["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou"}]}
    assert model["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert model["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert model["00280030"] == {"vr": "DS", "Value": [0.5, 0.25]}
    assert model["00200013"] == {"vr": "IS", "Value": [12]}
    assert model["00100030"] == {"vr": "DA"}
    assert model["00280010"] == {"vr": "US", "Value": [512]}
    assert model["00280009"] == {"vr": "AT", "Value": ["00181063"]}
    assert model["00189327"] == {"vr": "FD", "Value": [1.25]}
    assert model["00081140"] == {"vr": "SQ"}


@pytest.mark.parametrize(
    "ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_binary_numbers_in_each_byte_order(tmp_path: Path, ts: str) -> None:
    ds = minimal_dataset(Rows=300, Columns=2)
    ds.add_new(0x00280106, "US", 65535)  # Smallest Image Pixel Value (US or SS)
    ds.add_new(0x00189219, "SS", -3)  # Tag Angle Second Axis
    ds.add_new(0x00181310, "US", [0, 256, 256, 0])  # Acquisition Matrix
    ds.add_new(0x00081161, "UL", [4_000_000, 7])  # Simple Frame List
    ds.add_new(0x00186020, "SL", -70_000)  # Reference Pixel X0
    ds.add_new(0x00089459, "FL", 0.5)  # Recommended Display Frame Rate in Float
    ds.add_new(0x00189087, "FD", -1e300)  # Diffusion b-value
    model = _model(tmp_path, ds, ts)
    assert model["00280010"]["Value"] == [300]
    assert model["00181310"]["Value"] == [0, 256, 256, 0]
    assert model["00189219"]["Value"] == [-3]
    assert model["00280106"]["Value"] == [65535]
    assert model["00081161"]["Value"] == [4_000_000, 7]
    assert model["00186020"]["Value"] == [-70_000]
    assert model["00089459"]["Value"] == [0.5]
    assert model["00189087"]["Value"] == [-1e300]


def test_sequences_and_nested_bulk_data_paths(tmp_path: Path) -> None:
    icon = Dataset()
    icon.Rows = 2
    icon.Columns = 2
    icon.add_new(0x7FE00010, "OB", b"\x00\x01\x02\x03")
    code = Dataset()
    code.CodeValue = "T-D3000"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Chest"
    ds = minimal_dataset(
        IconImageSequence=Sequence([icon]), AnatomicRegionSequence=Sequence([code, code])
    )
    ds.add_new(0x7FE00010, "OW", b"\x00\x00" * 8)
    model = _model(tmp_path, ds)
    assert model["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    nested = model["00880200"]["Value"][0]
    assert nested["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/00880200/0/7FE00010"}
    assert nested["00280010"] == {"vr": "US", "Value": [2]}
    region = model["00082218"]["Value"]
    assert len(region) == 2
    assert region[1]["00080100"] == {"vr": "SH", "Value": ["T-D3000"]}


def test_threshold_applies_to_long_values_of_eligible_vrs(tmp_path: Path) -> None:
    ds = minimal_dataset(
        ImageComments="x" * 2000, OtherPatientIDs=[f"ID{i:04d}" for i in range(300)]
    )
    small = _model(tmp_path, ds, threshold=1024)
    assert small["00204000"] == {"vr": "LT", "BulkDataURI": "bulkdata/00204000"}
    # LO may not be a BulkDataURI (PS3.18 F.2.2), however long.
    assert len(small["00101000"]["Value"]) == 300
    large = _model(tmp_path, ds, threshold=4096)
    assert large["00204000"] == {"vr": "LT", "Value": ["x" * 2000]}


def test_empty_binary_value_has_no_bulk_uri(tmp_path: Path) -> None:
    ds = minimal_dataset()
    ds.add_new(0x00420011, "OB", b"")  # Encapsulated Document, empty
    assert _model(tmp_path, ds)["00420011"] == {"vr": "OB"}


def test_nan_in_fd_becomes_null_with_warning(tmp_path: Path) -> None:
    ds = minimal_dataset()
    ds.add_new(0x00189087, "FD", 1.5)
    path = write_part10(tmp_path / "nan.dcm", ds)
    patch_bytes(
        path, b"\x00\x00\x00\x00\x00\x00\xf8\x3f", b"\x00\x00\x00\x00\x00\x00\xf8\x7f"
    )  # 1.5 -> NaN (same exponent bits)
    record = parse_instance(path).record
    assert _strict(record.metadata_json)["00189087"] == {"vr": "FD"}
    assert any("(0018,9087)" in w and "NaN" in w for w in record.warnings)


def test_decimal_strings_keep_their_value(tmp_path: Path) -> None:
    values = ["-0.5", "1e3", "1E-2", "+7", ".25", "0.100000000001"]
    ds = minimal_dataset()
    ds.add_new(0x00181050, "DS", values)  # Spatial Resolution
    got = _model(tmp_path, ds)["00181050"]["Value"]
    assert all(math.isclose(a, float(b)) for a, b in zip(got, values, strict=True))
    assert got[0] == -0.5 and got[3] == 7 and isinstance(got[3], int)


@pytest.mark.parametrize(("representation", "value", "vr"), [(1, -5, "SS"), (0, 65000, "US")])
def test_implicit_us_or_ss_follows_pixel_representation(
    tmp_path: Path, representation: int, value: int, vr: str
) -> None:
    ds = minimal_dataset(PixelRepresentation=representation)
    ds.add_new(0x00280106, vr, value)  # Smallest Image Pixel Value: "US or SS"
    icon = Dataset()
    icon.add_new(0x00280107, vr, value)  # Largest Image Pixel Value, nested: inherits
    ds.IconImageSequence = Sequence([icon])
    model = _model(tmp_path, ds, ImplicitVRLittleEndian)
    assert model["00280106"] == {"vr": vr, "Value": [value]}
    assert model["00880200"]["Value"][0]["00280107"] == {"vr": vr, "Value": [value]}
