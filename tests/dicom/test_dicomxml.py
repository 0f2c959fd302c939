"""The Native DICOM Model XML (PS3.19 A.1) encoded from DICOM JSON (PS3.18 F.2)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomvault.dicom.dicomxml import NAMESPACE, native_xml, native_xml_many

NS = "{" + NAMESPACE + "}"


def _attribute(root: ET.Element, tag: str) -> ET.Element:
    for element in root.findall(f"{NS}DicomAttribute"):
        if element.get("tag") == tag:
            return element
    raise AssertionError(f"{tag} missing")


def _values(element: ET.Element) -> list[str | None]:
    return [value.text for value in element.findall(f"{NS}Value")]


def test_values_person_names_sequences_and_bulk_data() -> None:
    dataset: dict[str, Any] = {
        "00200013": {"vr": "IS", "Value": [7]},
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}],
        },
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
        "00081030": {"vr": "LO"},
        "00400275": {
            "vr": "SQ",
            "Value": [{"00401001": {"vr": "SH", "Value": ["RP1"]}}, {}],
        },
        "7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010?a=1&b=2"},
        "00191010": {"vr": "OB", "InlineBinary": "AAEC"},
        "00209161": {"vr": "AT", "Value": ["00100010"]},
    }
    document = native_xml(dataset)
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(document)
    assert root.tag == f"{NS}NativeDicomModel"
    tags = [element.get("tag") for element in root.findall(f"{NS}DicomAttribute")]
    assert tags == sorted(tags)
    number = _attribute(root, "00200013")
    assert (number.get("vr"), number.get("keyword")) == ("IS", "InstanceNumber")
    assert _values(number) == ["7"]
    assert [v.get("number") for v in number.findall(f"{NS}Value")] == ["1"]
    name = _attribute(root, "00100010").find(f"{NS}PersonName")
    assert name is not None and name.get("number") == "1"
    assert name.findtext(f"{NS}Alphabetic/{NS}FamilyName") == "Yamada"
    assert name.findtext(f"{NS}Alphabetic/{NS}GivenName") == "Tarou"
    assert name.findtext(f"{NS}Ideographic/{NS}FamilyName") == "山田"
    assert name.find(f"{NS}Phonetic") is None
    assert _values(_attribute(root, "00080008")) == ["ORIGINAL", None, "AXIAL"]
    empty = _attribute(root, "00081030")
    assert list(empty) == []
    items = _attribute(root, "00400275").findall(f"{NS}Item")
    assert [item.get("number") for item in items] == ["1", "2"]
    assert _values(_attribute(items[0], "00401001")) == ["RP1"]
    assert list(items[1]) == []
    bulk = _attribute(root, "7FE00010").find(f"{NS}BulkData")
    assert bulk is not None and bulk.get("uri") == "bulkdata/7FE00010?a=1&b=2"
    private = _attribute(root, "00191010")
    assert private.get("keyword") is None
    assert private.findtext(f"{NS}InlineBinary") == "AAEC"
    assert _values(_attribute(root, "00209161")) == ["00100010"]


def test_text_is_escaped_and_control_characters_dropped() -> None:
    dataset = {"00081030": {"vr": "LO", "Value": ["<a & b>\x00\x07 \"c\""]}}
    root = ET.fromstring(native_xml(dataset))
    assert _values(_attribute(root, "00081030")) == ['<a & b> "c"']


def test_a_real_header_round_trips_its_values() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = dcmread(path, stop_before_pixels=True)
    as_json = ds.to_json_dict(bulk_data_threshold=64, bulk_data_element_handler=lambda _: "x")
    [document] = native_xml_many([as_json])
    root = ET.fromstring(document)
    assert _values(_attribute(root, "00080018")) == [ds.SOPInstanceUID]
    assert _values(_attribute(root, "00280010")) == [str(ds.Rows)]
    patient = _attribute(root, "00100010").find(f"{NS}PersonName/{NS}Alphabetic")
    assert patient is not None
    assert patient.findtext(f"{NS}FamilyName") == str(ds.PatientName.family_name)
