"""Identifier codec: Specific Character Set honoured both ways (PS3.4 C.2.2.2, C.4.1.1.3)."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dicomvault.dicom.identifier import decode_identifier, encode_identifier
from dicomvault.model.query import (
    SPECIFIC_CHARACTER_SET,
    InformationModel,
    Level,
    Match,
)

SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"]
CHARSET_FILES = [
    "chrH31.dcm",
    "chrH32.dcm",
    "chrGreek.dcm",
    "chrJapMulti.dcm",
    "chrKoreanMulti.dcm",
    "chrRuss.dcm",
    "chrX1.dcm",
    "chrX2.dcm",
    "chrGerm.dcm",
    "chrI2.dcm",
]


def _encode(ds: Dataset, syntax: str) -> bytes:
    import zlib

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = syntax == "1.2.840.10008.1.2"
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax.endswith(".99"):
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = c.compress(data) + c.flush()
    return bytes(data)


def _decode(data: bytes, syntax: str) -> Dataset:
    import io
    import zlib

    if syntax.endswith(".99"):
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(data), syntax == "1.2.840.10008.1.2", True)


@pytest.mark.parametrize("name", CHARSET_FILES)
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_round_trip_of_names(name: str, syntax: str) -> None:
    [path] = [p for p in get_charset_files(name)]
    source = dcmread(path)
    ds = Dataset()
    ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = source.PatientName
    ds.StudyInstanceUID = ""
    query = decode_identifier(_encode(ds, syntax), syntax, InformationModel.STUDY_ROOT)
    assert query.level is Level.STUDY
    name_key = query.key("PatientName")
    assert name_key is not None
    assert name_key.value == str(source.PatientName).rstrip("=")
    charset = source.SpecificCharacterSet
    match = Match(
        {
            0x00100010: name_key.value,
            0x0020000D: "1.2.3",
            SPECIFIC_CHARACTER_SET: list(charset) if not isinstance(charset, str) else charset,
        }
    )
    out = _decode(encode_identifier(match, query, syntax, retrieve_ae_title="AE"), syntax)
    assert str(out.PatientName).rstrip("=") == name_key.value
    assert out.QueryRetrieveLevel == "STUDY"
    assert out.RetrieveAETitle == "AE"


def test_mixed_sets_fall_back_to_utf8() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientName = ""
    query = decode_identifier(_encode(ds, SYNTAXES[1]), SYNTAXES[1], InformationModel.PATIENT_ROOT)
    match = Match(
        {
            0x00100010: "\u0391\u03b8\u03b7\u03bd\u03b1=\u5c71\u7530",
            SPECIFIC_CHARACTER_SET: "ISO_IR 126",
        }
    )
    out = _decode(encode_identifier(match, query, SYNTAXES[1]), SYNTAXES[1])
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert str(out.PatientName) == "\u0391\u03b8\u03b7\u03bd\u03b1=\u5c71\u7530"


def test_ascii_without_character_set() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    query = decode_identifier(_encode(ds, SYNTAXES[0]), SYNTAXES[0], InformationModel.STUDY_ROOT)
    match = Match(
        {
            0x00100010: "Smith^J",
            0x00201208: 3,
            0x00080061: ["CT", "MR"],
            SPECIFIC_CHARACTER_SET: None,
            0x00081030: None,
        }
    )
    out = _decode(encode_identifier(match, query, SYNTAXES[0]), SYNTAXES[0])
    assert "SpecificCharacterSet" not in out
    assert out.NumberOfStudyRelatedInstances == 3
    assert list(out.ModalitiesInStudy) == ["CT", "MR"]
    assert out.StudyDescription in ("", None)
