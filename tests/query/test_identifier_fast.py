"""The hand-written Identifier writer equals pydicom's, byte for byte (PS3.4 C.4.1.1.3.2)."""

from __future__ import annotations

import random
import warnings

import pytest

from dicomvault.dicom import identifier
from dicomvault.dicom.identifier import IdentifierEncoder, encode_identifier_pydicom
from dicomvault.model.query import (
    SPECIFIC_CHARACTER_SET,
    InformationModel,
    Level,
    Match,
    Query,
    QueryKey,
)

SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
]
CHARSETS: list[object] = [
    None,
    None,
    "ISO_IR 100",
    "ISO_IR 192",
    "ISO_IR 144",
    "ISO_IR 126",
    "GB18030",
    ["ISO 2022 IR 6", "ISO 2022 IR 87"],
    ["ISO 2022 IR 100", "ISO 2022 IR 144"],
]
ALPHABETS = [
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcxyz0123456789^-.",
    "ÄÖÜäöüßéèçñ",
    "АБВГДЕЖЗабвгд",
    "ΑΒΓΔαβγδ",
    "山田太郎東京",
    "=\\",
]
PRIVATE = 0x00091010

KEYS = [
    QueryKey(0x00080020, "StudyDate", "DA", ""),
    QueryKey(0x00080030, "StudyTime", "TM", ""),
    QueryKey(0x00080050, "AccessionNumber", "SH", ""),
    QueryKey(0x00080061, "ModalitiesInStudy", "CS", ""),
    QueryKey(0x00080062, "SOPClassesInStudy", "UI", ""),
    QueryKey(0x00081030, "StudyDescription", "LO", ""),
    QueryKey(0x00100010, "PatientName", "PN", ""),
    QueryKey(0x00100020, "PatientID", "LO", ""),
    QueryKey(0x00101030, "PatientWeight", "DS", ""),
    QueryKey(0x00104000, "PatientComments", "LT", ""),
    QueryKey(0x0020000D, "StudyInstanceUID", "UI", ""),
    QueryKey(0x00201208, "NumberOfStudyRelatedInstances", "IS", ""),
    QueryKey(0x00280010, "Rows", "US", ""),
    QueryKey(PRIVATE, "(0009,1010)", "LO", ""),
]


def _text(rng: random.Random, alphabets: list[str]) -> str:
    letters = "".join(alphabets)
    return "".join(rng.choice(letters) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, key: QueryKey, alphabets: list[str]) -> object:
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.15:
        return ""
    vr = key.vr
    if vr == "DA":
        return f"{rng.randint(1900, 2099)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    if vr == "TM":
        return rng.choice(["1230", "123045", "123045.5", "07"])
    if vr == "CS":
        mods = rng.sample(["CT", "MR", "US", "SR", "PT"], rng.randint(1, 3))
        return mods if len(mods) > 1 or rng.random() < 0.5 else mods[0]
    if vr == "UI":
        uids = [f"1.2.{rng.randint(1, 10 ** rng.randint(1, 9))}" for _ in range(rng.randint(1, 2))]
        return uids if len(uids) > 1 else uids[0]
    if vr == "DS":
        return rng.choice([72.5, 80, "65.25", "1e-05", str(1 / 3), " 7", float("nan")])
    if vr == "IS":
        return rng.choice([0, 7, 1234, "12", "+5", "007", " 3", "x"])
    if vr == "US":
        return rng.choice([512, [1, 2], 0])
    if vr == "PN":
        names = [_text(rng, alphabets) for _ in range(rng.randint(1, 2))]
        return names if len(names) > 1 else names[0]
    return _text(rng, alphabets)


def _match(rng: random.Random, keys: list[QueryKey]) -> Match:
    charset = rng.choice(CHARSETS)
    alphabets = [ALPHABETS[0], *rng.sample(ALPHABETS[1:], rng.randint(0, 2))]
    values: dict[int, object] = {k.tag: _value(rng, k, alphabets) for k in keys}
    values[0x0020000D] = values.get(0x0020000D) or "1.2.3"
    if charset is not None:
        values[SPECIFIC_CHARACTER_SET] = charset
    if rng.random() < 0.05:
        values[0x00081111] = [{0x00081150: "1.2.3", 0x00081155: "1.2.3.4"}]
    return Match(values)


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_fast_writer_equals_pydicom(syntax: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(hash(syntax) & 0xFFFF)
    fallbacks = 0
    real = identifier.encode_identifier_pydicom

    def counting(*args: object, **kwargs: object) -> bytes:
        nonlocal fallbacks
        fallbacks += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    total = 600
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in range(total):
            keys = rng.sample(KEYS, rng.randint(1, len(KEYS)))
            query = Query(
                InformationModel.STUDY_ROOT, Level.STUDY, tuple(sorted(keys, key=lambda k: k.tag))
            )
            match = _match(rng, keys)
            ae = rng.choice([None, "DICOMVAULT", "AE1"])
            try:
                reference = encode_identifier_pydicom(match, query, syntax, retrieve_ae_title=ae)
            except Exception as exc:  # the reference refuses: so must the encoder
                with pytest.raises(type(exc)):
                    IdentifierEncoder(query, syntax, retrieve_ae_title=ae)(match)
                continue
            monkeypatch.setattr(identifier, "encode_identifier_pydicom", counting)
            fast = IdentifierEncoder(query, syntax, retrieve_ae_title=ae)(match)
            monkeypatch.setattr(identifier, "encode_identifier_pydicom", real)
            assert fast == reference, (n, match, ae)
    if syntax != "1.2.840.10008.1.2.2":
        assert fallbacks < total * 0.6  # the common case takes the fast path


@pytest.mark.parametrize("syntax", SYNTAXES[:3])
def test_one_encoder_for_many_matches_equals_pydicom(syntax: str) -> None:
    """An encoder keeps the layout of each set of tags it has written: the matches of one
    query, with and without a character set, still come out as pydicom writes them."""
    rng = random.Random(hash(syntax) & 0xFFFF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(40):
            keys = rng.sample(KEYS, rng.randint(1, len(KEYS)))
            query = Query(
                InformationModel.STUDY_ROOT, Level.STUDY, tuple(sorted(keys, key=lambda k: k.tag))
            )
            ae = rng.choice([None, "DICOMVAULT"])
            encoder = IdentifierEncoder(query, syntax, retrieve_ae_title=ae)
            for _ in range(15):
                match = _match(rng, keys)
                try:
                    reference = encode_identifier_pydicom(
                        match, query, syntax, retrieve_ae_title=ae
                    )
                except Exception as exc:
                    with pytest.raises(type(exc)):
                        encoder(match)
                    continue
                assert encoder(match) == reference, (match, ae)


def test_fast_path_taken_for_plain_study_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("fell back to pydicom")

    keys = tuple(k for k in KEYS if k.vr in ("PN", "LO", "DA", "SH", "CS", "UI", "IS"))
    query = Query(InformationModel.STUDY_ROOT, Level.STUDY, keys)
    monkeypatch.setattr(identifier, "encode_identifier_pydicom", fail)
    for charset, name in ((None, "DOE^JOHN"), ("ISO_IR 100", "MÜLLER^JÖRG"), (None, "Jöns")):
        values: dict[int, object] = {
            0x00100010: name,
            0x00100020: "PID1",
            0x00080020: "20240101",
            0x00080061: ["CT", "MR"],
            0x0020000D: "1.2.3.4",
            0x00201208: 12,
            SPECIFIC_CHARACTER_SET: charset,
        }
        for syntax in SYNTAXES[:3]:
            IdentifierEncoder(query, syntax, retrieve_ae_title="AE")(Match(values))
