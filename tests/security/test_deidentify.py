"""The de-identification engine (PS3.15 E.1, E.3) on real files: every attribute of Table
E.1-1 against its row, with each option; UID remapping across a study; private, curve and
overlay groups; burned-in annotation; what is added; what stays byte for byte; dciodvfy."""

from __future__ import annotations

import io
import re
import subprocess
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

import dicomvault
from dicomvault.dicom.deid_keys import DeidKeys
from dicomvault.dicom.deid_table import ATTRIBUTES
from dicomvault.dicom.deidentify import Options, deidentify
from dicomvault.model.errors import DeidentificationRefused, MissingAttribute, NotDicom
from tests.core.dicomfiles import bundled, deliberately_invalid, make_dataset, write_part10

KEYS = DeidKeys(b"a test secret of 32 bytes.......")
NEW_UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")
PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
#: Set by the engine itself (E.1.1), so not compared with their row.
ADDED = {0x00120062, 0x00120063, 0x00120064, 0x00280303}
#: An unlisted sequence whose item carries every attribute again (E.1.1: inside items too).
CARRIER = 0x00089215  # Derivation Code Sequence

OPTION_SETS = [
    Options(),
    Options(retain_uids=True),
    Options(retain_dates="full"),
    Options(retain_dates="modified"),
    Options(retain_patient_characteristics=True),
    Options(retain_device_identity=True),
    Options(retain_institution_identity=True),
    Options(retain_safe_private=True),
    Options(clean_descriptors=True),
]


def _value(tag: int, vr: str) -> Any:
    """A valid value of ``vr``, distinct per attribute (so no text mentions another)."""
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "CV1"
        item.CodingSchemeDesignator = "99TEST"
        item.CodeMeaning = "an item"
        return Sequence([item])
    return {
        "AE": f"AE{tag:08X}", "AS": "045Y", "CS": f"V{tag:08X}", "DA": "20200102",
        "DS": "1.5", "DT": "20200102030405", "IS": "7", "LO": f"v{tag:08X}",
        "LT": f"v{tag:08X}", "PN": f"Fam{tag:08X}^Giv{tag:08X}", "SH": f"v{tag:08X}",
        "ST": f"v{tag:08X}", "TM": "030405", "UC": f"v{tag:08X}", "UI": f"1.2.3.{tag}",
        "UR": f"http://example.com/{tag:08X}", "UT": f"v{tag:08X}", "FL": 1.5, "FD": 1.5,
        "SL": -3, "SS": -3, "UL": 3, "US": 3, "OB": b"\x01\x02", "OW": b"\x01\x02",
        "UN": b"\x01\x02",
    }[vr]  # fmt: skip


def _table_attributes() -> dict[int, str]:
    """Every Table E.1-1 attribute of a data set (not groups 0000-0007) → its VR."""
    out = {}
    for tag in ATTRIBUTES:
        if tag >> 16 < 0x0008 or tag in ADDED or not keyword_for_tag(tag):
            continue
        out[tag] = dictionary_VR(tag).split(" or ")[0]
    return out


def _full_dataset() -> Dataset:
    ds = Dataset()
    with deliberately_invalid():
        for tag, vr in _table_attributes().items():
            ds.add_new(tag, vr, _value(tag, vr))
        carried = Dataset()
        for tag, vr in _table_attributes().items():
            if vr != "SQ" and tag not in (PATIENT_NAME, PATIENT_ID):
                carried.add_new(tag, vr, _value(tag, vr))
        ds.add_new(CARRIER, "SQ", Sequence([carried]))
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    return ds


def _run(ds: Dataset, tmp_path: Path, options: Options) -> Dataset:
    path = write_part10(ds, tmp_path / "in.dcm")
    result = deidentify(path, KEYS, options)
    return dcmread(io.BytesIO(result.data))


def _expected_action(row: tuple[str, str, dict[str, str]], options: Options) -> str:
    """The action of the row's column, the option columns overriding (E.3)."""
    active = options.active()
    chosen = {action for option, action in row[2].items() if option in active}
    if chosen:
        return "K" if "K" in chosen else "C"
    combined = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}
    return combined.get(row[1], row[1])


def _empty(value: Any) -> bool:
    return (
        value is None
        or value == ""
        or value == b""
        or (isinstance(value, Sequence) and len(value) == 0)
    )


def _check(out: Dataset, tag: int, vr: str, action: str, options: Options, where: str) -> None:
    name = f"{where}{keyword_for_tag(tag)} ({tag:08X}) {action}"
    original = _value(tag, vr)
    if action == "X":
        assert tag not in out, name
        return
    if action == "C" and options.retain_dates == "modified" and vr in ("DA", "DT", "TM", "OB"):
        if vr == "OB":
            assert tag not in out, name  # a binary timestamp cannot be shifted
            return
        moved = date(2020, 1, 2) + timedelta(days=KEYS.date_shift_days("v00100020"))
        expected = {"DA": moved.strftime("%Y%m%d"), "DT": moved.strftime("%Y%m%d") + "030405",
                    "TM": "030405"}[vr]  # fmt: skip
        assert out[tag].value == expected, name
        return
    if action == "C" and vr in ("OB", "OW", "UN"):
        assert tag not in out, name
        return
    assert tag in out, name
    value = out[tag].value
    if vr == "SQ":
        if action == "Z":
            assert len(value) == 0, name
        else:  # D, K, C, U*: the items stay, each de-identified in turn
            assert len(value) == 1 and value[0].CodeMeaning == "an item", name
    elif action == "Z":
        assert _empty(value), name
    elif action == "U" or (action == "D" and vr == "UI"):
        assert value == KEYS.uid(original) and NEW_UID.match(value), name
    elif action == "D":
        assert not _empty(value) and value != original, name
    else:  # K, and C of text naming no one (the values are all distinct)
        assert value == original, name


@pytest.mark.parametrize(
    "options", OPTION_SETS, ids=lambda o: ",".join(sorted(o.active())) or "basic"
)
def test_every_table_attribute_gets_its_row_action(tmp_path: Path, options: Options) -> None:
    out = _run(_full_dataset(), tmp_path, options)
    carried = out[CARRIER].value[0]
    checked = 0
    for tag, vr in _table_attributes().items():
        action = _expected_action(ATTRIBUTES[tag], options)
        if tag in (PATIENT_NAME, PATIENT_ID):
            assert str(out[tag].value) == KEYS.pseudonym("v00100020")
        else:
            _check(out, tag, vr, action, options, "")
            checked += 1
        if vr != "SQ" and tag not in (PATIENT_NAME, PATIENT_ID):
            _check(carried, tag, vr, action, options, "item: ")
    assert checked > 500


def test_patient_pseudonym_links_a_patients_studies(tmp_path: Path) -> None:
    """Patient ID and Patient's Name become one keyed pseudonym of the Patient ID."""
    first = _run(make_dataset(study="1.2.3.1", name="Doe^John"), tmp_path, Options())
    second = _run(make_dataset(study="1.2.3.2", name="Doe^Johnny"), tmp_path, Options())
    assert first.PatientID == second.PatientID == KEYS.pseudonym("PID1")
    assert str(first.PatientName) == first.PatientID
    assert re.match(r"^ANON-[A-Z2-7]{10}$", first.PatientID)
    assert first.StudyInstanceUID != second.StudyInstanceUID


def _with_reference(sop: str, study: str, referenced: str) -> Dataset:
    ds = make_dataset(sop_instance_uid=sop, study=study, series=study + ".1")
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = referenced
    ds.ReferencedImageSequence = Sequence([ref])
    ds.FrameOfReferenceUID = study + ".9"
    return ds


def test_uids_are_remapped_consistently_across_a_study_and_runs(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.77"
    a = _run(_with_reference(study + ".1.1", study, study + ".1.2"), tmp_path, Options())
    b = _run(_with_reference(study + ".1.2", study, study + ".1.1"), tmp_path, Options())
    assert a.StudyInstanceUID == b.StudyInstanceUID == KEYS.uid(study)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID != study + ".9"
    assert a.SOPInstanceUID != b.SOPInstanceUID
    # each references the other by its new UID, inside the sequence
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.ReferencedImageSequence[0].ReferencedSOPClassUID == a.SOPClassUID  # not listed
    for uid in (a.StudyInstanceUID, a.SOPInstanceUID, a.FrameOfReferenceUID):
        assert NEW_UID.match(uid) and len(uid) <= 64
    # the same secret in a new object (another run) maps the same; another secret not
    assert DeidKeys(b"a test secret of 32 bytes.......").uid(study) == a.StudyInstanceUID
    assert DeidKeys(b"another secret of 32 bytes......").uid(study) != a.StudyInstanceUID
    # the file meta follows the new SOP Instance UID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID


def test_retain_uids_keeps_them(tmp_path: Path) -> None:
    ds = _with_reference("1.2.3.4.1", "1.2.3.4", "1.2.3.4.2")
    out = _run(ds, tmp_path, Options(retain_uids=True))
    assert (out.SOPInstanceUID, out.StudyInstanceUID) == ("1.2.3.4.1", "1.2.3.4")
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.2"
    assert out.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.1"


def test_what_the_profile_adds(tmp_path: Path) -> None:
    """E.1.1: Patient Identity Removed, the method and its CID 7050 codes, and
    Longitudinal Temporal Information Modified; our file meta without Source AE."""
    ds = make_dataset()
    out = _run(ds, tmp_path, Options(retain_dates="modified", clean_descriptors=True))
    assert out.PatientIdentityRemoved == "YES"
    items = out.DeidentificationMethodCodeSequence
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in items]
    assert codes == [("113100", "DCM"), ("113105", "DCM"), ("113107", "DCM")]
    assert "Basic Application Confidentiality Profile" in out.DeidentificationMethod
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert _run(ds, tmp_path, Options()).LongitudinalTemporalInformationModified == "REMOVED"
    full = _run(ds, tmp_path, Options(retain_dates="full"))
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert full.StudyDate == "20260102"
    meta = out.file_meta
    assert meta.ImplementationClassUID == dicomvault.IMPLEMENTATION_CLASS_UID
    assert "SourceApplicationEntityTitle" not in meta
    every = Options(
        retain_uids=True, retain_dates="full", retain_patient_characteristics=True,
        retain_device_identity=True, retain_institution_identity=True,
        retain_safe_private=True, clean_descriptors=True,
    )  # fmt: skip
    codes = [i.CodeValue for i in _run(ds, tmp_path, every).DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113106", "113108", "113109", "113110", "113111",
                     "113112"]  # fmt: skip


def test_clean_descriptors_keeps_only_text_naming_no_one(tmp_path: Path) -> None:
    ds = make_dataset(name="Doe^John")
    ds.AccessionNumber = "ACC777"
    ds.StudyDescription = "CT head"
    ds.SeriesDescription = "follow-up of john doe"
    ds.ImageComments = "see ACC777"
    ds.PatientComments = "born 2001-02-03"
    ds.PatientBirthDate = "20010203"
    out = _run(ds, tmp_path, Options(clean_descriptors=True))
    assert out.StudyDescription == "CT head"
    assert out.SeriesDescription == "ANONYMIZED"
    assert out.ImageComments == "ANONYMIZED"
    assert out.PatientComments == "ANONYMIZED"
    basic = _run(ds, tmp_path, Options())
    assert "StudyDescription" not in basic and "SeriesDescription" not in basic


def test_modified_dates_shift_whole_days_per_patient(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.StudyDate, ds.StudyTime = "20260102", "101500"
    ds.AcquisitionDateTime = "20260102101600.5+0100"
    with deliberately_invalid():
        ds.SeriesDate = "2026"  # partial: cannot be moved, gets the dummy
    out = _run(ds, tmp_path, Options(retain_dates="modified"))
    shift = KEYS.date_shift_days("PID1")
    assert -3652 <= shift <= -1
    moved = (date(2026, 1, 2) + timedelta(days=shift)).strftime("%Y%m%d")
    assert out.StudyDate == moved
    assert out.StudyTime == "101500"
    assert out.AcquisitionDateTime == moved + "101600.5+0100"
    assert out.SeriesDate == "19000101"


def test_private_attributes(tmp_path: Path) -> None:
    """E.3.10: removed; with Retain Safe Private those of Table E.3.10-1 stay with their
    Private Creator, the rest go."""
    ds = make_dataset()
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x23, "DS", "1.5")  # Table Speed: safe
    block.add_new(0x10, "LO", "Doe^John's scanner")  # not listed: never safe
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x01, "LO", "secret")
    basic = _run(ds, tmp_path, Options())
    assert not [e for e in basic if e.tag.is_private]
    kept = _run(ds, tmp_path, Options(retain_safe_private=True))
    assert sorted(int(e.tag) for e in kept if e.tag.is_private) == [0x00190010, 0x00191023]
    assert kept[0x00191023].value == "1.5"


def test_curves_and_overlays(tmp_path: Path) -> None:
    src = dcmread(bundled("examples_overlay.dcm"))
    assert 0x60003000 in src
    with deliberately_invalid():
        src.add_new(0x50000010, "US", 3)  # a (retired) curve
        src.add_new(0x60004000, "LT", "overlay comment")
    out = _run(src, tmp_path, Options())
    assert not [e for e in out if e.tag.group & 0xFF00 in (0x5000, 0x6000)]
    assert out.PixelData == src.PixelData


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.BurnedInAnnotation = "YES"
    path = write_part10(ds, tmp_path / "burned.dcm")
    with pytest.raises(DeidentificationRefused, match=r"burned\.dcm: Burned In Annotation"):
        deidentify(path, KEYS, Options(), name=str(path))
    allowed = dcmread(io.BytesIO(deidentify(path, KEYS, Options(), allow_burned_in=True).data))
    assert allowed.BurnedInAnnotation == "YES"


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff" * 300)
    with pytest.raises(NotDicom):
        deidentify(junk, KEYS, Options())
    ds = make_dataset()
    del ds.StudyInstanceUID
    with pytest.raises(MissingAttribute, match="Study Instance UID"):
        deidentify(write_part10(ds, tmp_path / "nostudy.dcm"), KEYS, Options())


def test_preamble_is_zero_even_when_the_source_had_a_polyglot(tmp_path: Path) -> None:
    """CVE-2019-11687: the 128-byte preamble may hold an executable header; ours is zeros."""
    raw = bytearray(bundled("CT_small.dcm").read_bytes())
    raw[:128] = (b"MZ\x90\x00" + b"\xcc" * 124)[:128]
    source = tmp_path / "polyglot.dcm"
    source.write_bytes(bytes(raw))
    data = deidentify(source, KEYS, Options()).data
    assert data[:128] == bytes(128) and data[128:132] == b"DICM"


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm",
     "image_dfl.dcm", "rtplan.dcm", "SC_rgb_jpeg.dcm"],
)  # fmt: skip
def test_pixel_data_and_transfer_syntax_are_kept(name: str) -> None:
    source = bundled(name)
    result = deidentify(source, KEYS, Options())
    with deliberately_invalid():  # SC_rgb_jpeg.dcm: labelled explicit, written implicit
        src = dcmread(source)
    out = dcmread(io.BytesIO(result.data))
    assert result.transfer_syntax_uid == src.file_meta.TransferSyntaxUID
    assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    if "PixelData" in src:
        assert out.PixelData == src.PixelData


def _dciodvfy_errors(path: Path) -> int:
    done = subprocess.run(
        ["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=120
    )
    return sum(1 for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error"))


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "test-SR.dcm",
     "SC_rgb_jpeg_dcmtk.dcm", "waveform_ecg.dcm", "examples_overlay.dcm", "SC_rgb_jpeg.dcm"],
)  # fmt: skip
@pytest.mark.parametrize(
    "options",
    [Options(), Options(retain_dates="modified", clean_descriptors=True, retain_safe_private=True)],
    ids=["basic", "options"],
)
def test_dciodvfy_finds_no_more_errors_than_in_the_source(
    name: str, options: Options, tmp_path: Path
) -> None:
    assert Path("/usr/bin/dciodvfy").exists(), "install dicom3tools (make tools)"
    source = bundled(name)
    out = tmp_path / "out.dcm"
    out.write_bytes(deidentify(source, KEYS, options).data)
    assert _dciodvfy_errors(out) <= _dciodvfy_errors(source)


def test_same_instance_twice_gives_identical_bytes(tmp_path: Path) -> None:
    source = write_part10(make_dataset(sop_instance_uid=generate_uid()), tmp_path / "a.dcm")
    assert deidentify(source, KEYS, Options()).data == deidentify(source, KEYS, Options()).data
