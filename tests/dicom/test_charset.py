"""Specific Character Set (PS3.3 C.12.1.1.2, PS3.5 6.1): decoded to Unicode, with
warnings (never Python warnings) for what cannot be decoded."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicomvault.dicom import parse_instance
from dicomvault.dicom.charset import DEFAULT_CHARSET, TEXT_DELIMITERS, decode_text, resolve_charset
from dicomvault.dicom.dicomjson import dataset_json
from dicomvault.dicom.part10 import read_file_meta
from dicomvault.dicom.reader import Reader
from tests.dicom.files import bundled_file, minimal_dataset, patch_bytes, write_part10

# Expected names written out (not taken from pydicom) so a shared bug cannot hide.
NAMES = {
    "chrArab.dcm": "قباني^لنزار",
    "chrFren.dcm": "Buc^Jérôme",
    "chrFrenMulti.dcm": "Buc^Jérôme",
    "chrGerm.dcm": "Äneas^Rüdiger",
    "chrGreek.dcm": "Διονυσιος",
    "chrH31.dcm": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "chrH32.dcm": "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
    "chrHbrw.dcm": "שרון^דבורה",
    "chrI2.dcm": "Hong^Gildong=洪^吉洞=홍^길동",
    "chrKoreanMulti.dcm": "김희중",
    "chrRuss.dcm": "Люкceмбypг",
    "chrX1.dcm": "Wang^XiaoDong=王^小東",
    "chrX2.dcm": "Wang^XiaoDong=王^小东",
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_patient_name_decoded(name: str) -> None:
    path = bundled_file(name)
    record = parse_instance(path).record
    assert record.patient.patient_name == NAMES[name]
    assert record.patient.patient_name == str(pydicom.dcmread(path).PatientName)
    assert record.warnings == ()
    # The JSON carries the same name, split into its component groups (PS3.18 F.2.2).
    groups = NAMES[name].split("=")
    model = json.loads(record.metadata_json)
    expected = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
    assert model["00100010"] == {"vr": "PN", "Value": [expected]}


@pytest.mark.parametrize("name", ["chrJapMulti.dcm", "chrJapMultiExplicitIR6.dcm"])
def test_japanese_multi_valued(tmp_path: Path, name: str) -> None:
    # pydicom's copies disagree with their own meta (last digit of the instance UID);
    # make them consistent so the charset handling can be checked.
    path = tmp_path / name
    path.write_bytes(bundled_file(name).read_bytes())
    patch_bytes(path, b"29308.17461", b"29308.17462")
    record = parse_instance(path).record
    assert record.patient.patient_name == "やまだ^たろう"
    model = json.loads(record.metadata_json)
    # (0010,1001) Other Patient Names: two PN values, each in ISO 2022 IR 87.
    assert model["00101001"] == {"vr": "PN", "Value": [{"Alphabetic": "やまだ^たろう"}] * 2}
    assert model["001021B0"] == {"vr": "LT", "Value": ["たろう"]}  # Additional Patient History
    assert model["00081030"] == {"vr": "LO", "Value": ["Chest"]}
    assert record.warnings == ()


def _json_of(path: Path) -> dict[str, object]:
    """Decode any file's data set to JSON with the reader (no identity checks)."""
    head = path.read_bytes()
    meta = read_file_meta(head[:65536])
    with open(path, "rb") as fp:
        reader = Reader(fp, meta.dataset_offset, len(head), initial=b"")
        ds, _ = reader.read_dataset(meta.dataset_offset, None, False, True)
    warnings: list[str] = []
    model: dict[str, object] = json.loads(dataset_json(ds, DEFAULT_CHARSET, True, warnings))
    assert warnings == []
    return model


@pytest.mark.parametrize("name", ["chrSQEncoding.dcm", "chrSQEncoding1.dcm"])
def test_sequence_item_with_its_own_charset(name: str) -> None:
    # (0032,1064) Requested Procedure Code Sequence items redefine (0008,0005).
    model = _json_of(bundled_file(name))
    original = pydicom.dcmread(bundled_file(name))
    item = model["00321064"]["Value"][0]  # type: ignore[index]
    expected = str(original[0x00321064][0].PatientName)
    assert "=".join(item["00100010"]["Value"][0].values()) == expected
    assert expected.startswith("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎")


def test_unknown_charset_is_stored_with_warning(tmp_path: Path) -> None:
    ds = minimal_dataset(SpecificCharacterSet="ISO_IR 100", PatientName="Buc^Jérôme")
    path = write_part10(tmp_path / "u.dcm", ds)
    patch_bytes(path, b"ISO_IR 100", b"ISO_IR 999")
    record = parse_instance(path).record  # warnings are errors: none may escape
    assert record.patient.patient_name == "Buc^Jérôme"  # Latin-1 fallback keeps the bytes
    assert "unknown Specific Character Set 'ISO_IR 999'; text decoded as ISO_IR 6" in (
        record.warnings
    )
    assert record.study.specific_character_set == "ISO_IR 999"


def test_misspelled_charset_is_corrected(tmp_path: Path) -> None:
    ds = minimal_dataset(SpecificCharacterSet="ISO_IR 144", PatientName="Люкceмбypг")
    path = write_part10(tmp_path / "m.dcm", ds)
    patch_bytes(path, b"ISO_IR 144", b"ISO IR 144")
    record = parse_instance(path).record
    assert record.patient.patient_name == "Люкceмбypг"
    assert any("misspelled" in w and "ISO IR 144" in w for w in record.warnings)


def test_undecodable_utf8_becomes_replacement_character(tmp_path: Path) -> None:
    ds = minimal_dataset(SpecificCharacterSet="ISO_IR 192", PatientName="Zoë^Ann")
    path = write_part10(tmp_path / "bad.dcm", ds)
    patch_bytes(path, "Zoë".encode(), b"Zo\xff\xfe")
    record = parse_instance(path).record
    assert record.patient.patient_name == "Zo\ufffd\ufffd^Ann"
    assert any("(0010,0010)" in w and "undecodable" in w for w in record.warnings)


def test_utf8_with_code_extensions_is_flagged() -> None:
    charset, problems = resolve_charset(["ISO_IR 192", "ISO 2022 IR 87"])
    assert charset.encodings == ("UTF8",)
    assert problems and "allows no code extensions" in problems[0]


def test_text_delimiters_reset_to_first_charset() -> None:
    # PS3.5 6.1.2.5.3: after CR/LF the G1 set returns to the default in a text value.
    charset, _ = resolve_charset(["", "ISO 2022 IR 126"])
    raw = b"\x1b-F\xe1\xe2\r\nab"
    text, problem = decode_text(raw, charset, TEXT_DELIMITERS)
    assert (text, problem) == ("αβ\r\nab", None)
