"""parse_instance: layouts, transfer syntaxes, validation and index records."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomvault.dicom import parse_instance
from dicomvault.dicom.part10 import encode_file_meta
from dicomvault.model.errors import (
    CannotParse,
    InvalidInstance,
    InvalidUID,
    MissingAttribute,
    NotDicom,
    UIDMismatch,
)
from tests.dicom.files import (
    CT_IMAGE_STORAGE,
    INSTANCE,
    SERIES,
    STUDY,
    bundled_file,
    deliberately_invalid,
    encode_dataset,
    minimal_dataset,
    nested_sequences,
    patch_bytes,
    with_request_attributes,
    write_bytes,
    write_part10,
)


def test_ct_small_record_matches_pydicom() -> None:
    path = bundled_file("CT_small.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    parsed = parse_instance(path)
    record = parsed.record
    assert parsed.layout == "part10"
    assert parsed.transfer_syntax_uid == ExplicitVRLittleEndian
    assert parsed.dataset_offset == 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    assert record.patient.patient_id == ds.PatientID
    assert record.patient.patient_name == "CompressedSamples^CT1"
    assert record.patient.patient_sex == ds.PatientSex
    assert record.study.study_instance_uid == ds.StudyInstanceUID
    assert record.study.study_date == ds.StudyDate
    assert record.series.series_instance_uid == ds.SeriesInstanceUID
    assert record.series.modality == "CT"
    assert record.instance.sop_instance_uid == ds.SOPInstanceUID
    assert record.instance.sop_class_uid == ds.SOPClassUID
    assert record.instance.transfer_syntax_uid == ExplicitVRLittleEndian
    assert record.instance.instance_number == ds.InstanceNumber
    assert (record.instance.rows, record.instance.columns) == (128, 128)
    assert record.instance.bits_allocated == 16
    assert record.instance.image_type == "\\".join(ds.ImageType)
    assert record.warnings == ()


def test_every_record_field_is_filled(tmp_path: Path) -> None:
    ds = minimal_dataset(
        IssuerOfPatientID="HOSP",
        PatientBirthDate="19700101",
        PatientBirthTime="101010",
        PatientSex="F",
        OtherPatientIDs=["A1", "B2"],
        EthnicGroup="X",
        PatientComments="none",
        StudyDate="20240102",
        StudyTime="030405",
        AccessionNumber="ACC1",
        StudyID="S1",
        StudyDescription="Chest",
        ReferringPhysicianName="Ref^Doc",
        TimezoneOffsetFromUTC="+0100",
        PatientAge="054Y",
        PatientSize="1.75",
        PatientWeight="70",
        SpecificCharacterSet="ISO_IR 100",
        SeriesNumber="7",
        SeriesDescription="Axial",
        SeriesDate="20240102",
        SeriesTime="030500",
        BodyPartExamined="CHEST",
        InstitutionName="General",
        StationName="CT01",
        PerformedProcedureStepStartDate="20240102",
        PerformedProcedureStepStartTime="0300",
        InstanceNumber="12",
        ContentDate="20240102",
        ContentTime="030600",
        AcquisitionDateTime="20240102030600",
        Rows=512,
        Columns=256,
        BitsAllocated=16,
        NumberOfFrames="3",
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        CompletionFlag="COMPLETE",
        VerificationFlag="VERIFIED",
        ContentLabel="LABEL",
    )
    with_request_attributes(ds, [("SPS1", "RP1"), ("SPS2", "RP2")])
    record = parse_instance(write_part10(tmp_path / "full.dcm", ds)).record
    p, st, se, i = record.patient, record.study, record.series, record.instance
    assert (p.patient_id, p.issuer_of_patient_id, p.patient_name) == ("PID-1", "HOSP", "Doe^Jane")
    assert (p.patient_birth_date, p.patient_birth_time, p.patient_sex) == (
        "19700101",
        "101010",
        "F",
    )
    assert (p.other_patient_ids, p.ethnic_group, p.patient_comments) == ("A1\\B2", "X", "none")
    assert (st.study_date, st.study_time, st.accession_number, st.study_id) == (
        "20240102",
        "030405",
        "ACC1",
        "S1",
    )
    assert (st.study_description, st.referring_physician_name) == ("Chest", "Ref^Doc")
    assert (st.timezone_offset_from_utc, st.patient_age) == ("+0100", "054Y")
    assert (st.patient_size, st.patient_weight, st.specific_character_set) == (
        "1.75",
        "70",
        "ISO_IR 100",
    )
    assert (se.series_number, se.series_description, se.series_date, se.series_time) == (
        7,
        "Axial",
        "20240102",
        "030500",
    )
    assert (se.body_part_examined, se.institution_name, se.station_name) == (
        "CHEST",
        "General",
        "CT01",
    )
    assert (se.performed_procedure_step_start_date, se.performed_procedure_step_start_time) == (
        "20240102",
        "0300",
    )
    assert se.scheduled_procedure_step_id == "SPS1\\SPS2"
    assert se.requested_procedure_id == "RP1\\RP2"
    assert (i.instance_number, i.content_date, i.content_time) == (12, "20240102", "030600")
    assert i.acquisition_date_time == "20240102030600"
    assert (i.rows, i.columns, i.bits_allocated, i.number_of_frames) == (512, 256, 16, 3)
    assert i.image_type == "ORIGINAL\\PRIMARY\\AXIAL"
    assert (i.completion_flag, i.verification_flag, i.content_label) == (
        "COMPLETE",
        "VERIFIED",
        "LABEL",
    )


def test_absent_values_are_none_and_missing_patient_id_is_empty(tmp_path: Path) -> None:
    ds = minimal_dataset(PatientID=None, PatientName=None, Modality=None)
    ds.add_new(0x00200013, "IS", None)  # Instance Number present but empty
    record = parse_instance(write_part10(tmp_path / "bare.dcm", ds)).record
    assert record.patient.patient_id == ""
    assert record.patient.patient_name is None
    assert record.series.modality is None
    assert record.series.scheduled_procedure_step_id is None
    assert record.instance.instance_number is None


def test_invalid_is_becomes_none_with_warning(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "is.dcm", minimal_dataset(SeriesNumber="123"))
    patch_bytes(path, b"\x20\x00\x11\x00IS\x04\x00123 ", b"\x20\x00\x11\x00IS\x04\x0012a ")
    record = parse_instance(path).record
    assert record.series.series_number is None
    assert any("(0020,0011)" in w and "not a valid number" in w for w in record.warnings)
    assert json.loads(record.metadata_json)["00200011"] == {"vr": "IS"}


# -- layouts and transfer syntaxes ----------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_each_transfer_syntax(tmp_path: Path, ts: str) -> None:
    ds = minimal_dataset(Rows=16, Columns=16, BitsAllocated=16, NumberOfFrames="1")
    parsed = parse_instance(write_part10(tmp_path / "ts.dcm", ds, ts))
    assert parsed.transfer_syntax_uid == ts
    assert parsed.record.instance.transfer_syntax_uid == ts
    assert parsed.record.instance.rows == 16
    assert parsed.record.patient.patient_name == "Doe^Jane"


def test_no_preamble_layout(tmp_path: Path) -> None:
    data = bundled_file("CT_small.dcm").read_bytes()
    parsed = parse_instance(write_bytes(tmp_path / "np.dcm", data[128:]))
    full = parse_instance(bundled_file("CT_small.dcm"))
    assert parsed.layout == "no-preamble"
    assert parsed.dataset_offset == full.dataset_offset - 128
    assert parsed.record == full.record


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (ImplicitVRLittleEndian, ImplicitVRLittleEndian),
        (ExplicitVRLittleEndian, ExplicitVRLittleEndian),
        (ExplicitVRBigEndian, ExplicitVRBigEndian),
    ],
)
def test_no_meta_layout_detects_encoding(tmp_path: Path, ts: str, expected: str) -> None:
    ds = minimal_dataset(Rows=64, SpecificCharacterSet="ISO_IR 100")
    parsed = parse_instance(write_bytes(tmp_path / "raw.dcm", encode_dataset(ds, ts)))
    assert parsed.layout == "no-meta"
    assert parsed.dataset_offset == 0
    assert parsed.transfer_syntax_uid == expected
    assert parsed.record.instance.rows == 64
    assert parsed.record.instance.sop_instance_uid == INSTANCE


@pytest.mark.parametrize(
    ("name", "ts"),
    [
        ("ExplVR_BigEndNoMeta.dcm", ExplicitVRBigEndian),
        ("ExplVR_LitEndNoMeta.dcm", ExplicitVRLittleEndian),
    ],
)
def test_bundled_no_meta_files(name: str, ts: str) -> None:
    path = bundled_file(name)
    ds = pydicom.dcmread(path, force=True)
    parsed = parse_instance(path)
    assert (parsed.layout, parsed.transfer_syntax_uid) == ("no-meta", ts)
    assert parsed.record.instance.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.record.study.study_instance_uid == ds.StudyInstanceUID
    assert parsed.record.series.modality == ds.Modality


def test_rtstruct_no_meta_implicit() -> None:
    parsed = parse_instance(bundled_file("rtstruct.dcm"))
    assert (parsed.layout, parsed.transfer_syntax_uid) == ("no-meta", ImplicitVRLittleEndian)
    assert parsed.record.patient.patient_name == "Test^Phantom30sep"


@pytest.mark.parametrize(
    "name",
    [
        "image_dfl.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "JPGExtended.dcm",
        "rtdose_rle.dcm",
        "waveform_ecg.dcm",
    ],
)
def test_bundled_transfer_syntaxes_match_pydicom(name: str) -> None:
    path = bundled_file(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    parsed = parse_instance(path)
    assert parsed.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert parsed.record.instance.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.record.study.study_instance_uid == ds.StudyInstanceUID
    assert parsed.record.patient.patient_id == ds.get("PatientID", "")


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_encapsulated_pixel_data_is_bulk(name: str) -> None:
    model = json.loads(parse_instance(bundled_file(name)).record.metadata_json)
    assert model["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"}


def test_implicit_pixel_data_is_ow_bulk() -> None:
    model = json.loads(parse_instance(bundled_file("MR_small_implicit.dcm")).record.metadata_json)
    assert model["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}


def test_mislabelled_implicit_data_set_is_read_with_warning() -> None:
    # SC_rgb_jpeg.dcm says JPEG Baseline (explicit VR) but its data set is implicit VR.
    parsed = parse_instance(bundled_file("SC_rgb_jpeg.dcm"))
    with deliberately_invalid():
        assert parsed.record.instance.rows == pydicom.dcmread(bundled_file("SC_rgb_jpeg.dcm")).Rows
    assert any("implicit VR" in w for w in parsed.record.warnings)


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"DI", b"plain text, no DICOM here\n" * 40, b"\x89PNG\r\n\x1a\n" + bytes(500)]
)
def test_not_dicom(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(NotDicom):
        parse_instance(write_bytes(tmp_path / "x", data))


def test_truncated_inside_header(tmp_path: Path) -> None:
    data = bundled_file("CT_small.dcm").read_bytes()
    parsed = parse_instance(bundled_file("CT_small.dcm"))
    pixel = data.index(b"\xe0\x7f\x10\x00OW")
    for cut in (
        parsed.dataset_offset + 3,
        parsed.dataset_offset + 10,
        700,
        1500,
        pixel - 5,
        pixel + 6,
    ):
        with pytest.raises(CannotParse, match="truncated"):
            parse_instance(write_bytes(tmp_path / "cut.dcm", data[:cut]))


def test_truncated_inside_pixel_data(tmp_path: Path) -> None:
    with pytest.raises(
        CannotParse,
        match=r"^truncated: Pixel Data \(7FE0,0010\) declares 8192 bytes, "
        r"file has 8130$",
    ):
        parse_instance(bundled_file("MR_truncated.dcm"))
    data = bundled_file("CT_small.dcm").read_bytes()
    with pytest.raises(CannotParse, match=r"Pixel Data \(7FE0,0010\) declares 32768 bytes"):
        parse_instance(write_bytes(tmp_path / "cut.dcm", data[:-1000]))


def test_truncated_inside_encapsulated_fragments(tmp_path: Path) -> None:
    data = bundled_file("JPEG2000.dcm").read_bytes()
    pixel = data.index(b"\xe0\x7f\x10\x00OB")
    for cut in (len(data) - 4, len(data) - 100, pixel + 14, pixel + 30):
        with pytest.raises(CannotParse, match="Pixel Data"):
            parse_instance(write_bytes(tmp_path / "cut.dcm", data[:cut]))


def test_truncated_deflated(tmp_path: Path) -> None:
    data = bundled_file("image_dfl.dcm").read_bytes()
    with pytest.raises(CannotParse):
        parse_instance(write_bytes(tmp_path / "cut.dcm", data[: len(data) * 2 // 3]))


def test_bundled_truncated_rtplan() -> None:
    with pytest.raises(CannotParse, match=r"truncated: Isocenter Position \(300A,012C\)"):
        parse_instance(bundled_file("rtplan_truncated.dcm"))


def test_deeply_nested_sequences(tmp_path: Path) -> None:
    head = encode_dataset(minimal_dataset())
    path = write_bytes(tmp_path / "deep.dcm", head + nested_sequences(5000))
    with pytest.raises(CannotParse, match="nested deeper"):
        parse_instance(path)
    # A sane depth is read.
    ok = parse_instance(write_bytes(tmp_path / "ok.dcm", head + nested_sequences(20)))
    assert "0040A730" in json.loads(ok.record.metadata_json)


def test_element_overrunning_its_item(tmp_path: Path) -> None:
    item = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 40) + b"CODE"
    sq = (
        struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 8 + len(item))
        + struct.pack("<HHL", 0xFFFE, 0xE000, len(item))
        + item
    )
    path = write_bytes(tmp_path / "bad.dcm", encode_dataset(minimal_dataset()) + sq)
    with pytest.raises(CannotParse, match="malformed"):
        parse_instance(path)


@pytest.mark.parametrize(
    ("keyword", "name"),
    [
        ("SOPInstanceUID", r"SOP Instance UID \(0008,0018\)"),
        ("SOPClassUID", r"SOP Class UID \(0008,0016\)"),
        ("StudyInstanceUID", r"Study Instance UID \(0020,000D\)"),
        ("SeriesInstanceUID", r"Series Instance UID \(0020,000E\)"),
    ],
)
def test_missing_identifying_uid(tmp_path: Path, keyword: str, name: str) -> None:
    ds = minimal_dataset(**{keyword: None})
    path = write_bytes(tmp_path / "m.dcm", encode_dataset(ds))
    with pytest.raises(MissingAttribute, match=f"^missing {name}$"):
        parse_instance(path)


@pytest.mark.parametrize("bad", ["1.2.3.abc", "../../etc/x", "1." + "2" * 70, "1..2"])
def test_invalid_uid(tmp_path: Path, bad: str) -> None:
    with deliberately_invalid():
        ds = minimal_dataset(StudyInstanceUID=bad)
    path = write_bytes(tmp_path / "u.dcm", encode_dataset(ds))
    with pytest.raises(InvalidUID, match=r"^Study Instance UID \(0020,000D\) "):
        parse_instance(path)


def test_uid_with_leading_zero_component_is_accepted(tmp_path: Path) -> None:
    ds = minimal_dataset(SeriesInstanceUID="1.2.03.4")  # lenient: real modalities do this
    assert (
        parse_instance(write_part10(tmp_path / "z.dcm", ds)).record.series.series_instance_uid
        == "1.2.03.4"
    )


def test_meta_instance_uid_mismatch(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "mm.dcm", minimal_dataset())
    patch_bytes(path, INSTANCE.encode(), INSTANCE[:-1].encode() + b"9")  # the meta's copy
    with pytest.raises(UIDMismatch, match=r"\(0002,0003\) '[0-9.]+9' differs from SOP Inst"):
        parse_instance(path)


def test_meta_class_uid_mismatch(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "mc.dcm", minimal_dataset())
    patch_bytes(path, CT_IMAGE_STORAGE.encode(), b"1.2.840.10008.5.1.4.1.1.4")
    with pytest.raises(UIDMismatch, match=r"\(0002,0002\)"):
        parse_instance(path)


@pytest.mark.parametrize("name", ["DICOMDIR", "DICOMDIR-implicit", "DICOMDIR-bigEnd"])
def test_dicomdir_is_not_an_instance(tmp_path: Path, name: str) -> None:
    source = Path(bundled_file("CT_small.dcm")).parent / "dicomdirtests" / name
    path = Path(shutil.copy(source, tmp_path / name))
    with pytest.raises(InvalidInstance, match=r"is a DICOMDIR \(media index\), not an instance"):
        parse_instance(path)


def test_dicomdir_without_meta_class_is_still_refused(tmp_path: Path) -> None:
    ds = minimal_dataset()
    ds.DirectoryRecordSequence = pydicom.Sequence([Dataset()])
    with pytest.raises(InvalidInstance, match="DICOMDIR"):
        parse_instance(write_bytes(tmp_path / "dd", encode_dataset(ds)))


def test_parse_writes_nothing_and_our_meta_is_readable(tmp_path: Path) -> None:
    """A file made of encode_file_meta + a data set parses as part10 at that offset."""
    meta = encode_file_meta(CT_IMAGE_STORAGE, INSTANCE, ExplicitVRLittleEndian)
    path = write_bytes(tmp_path / "ours.dcm", meta + encode_dataset(minimal_dataset()))
    before = path.read_bytes()
    parsed = parse_instance(path)
    assert (parsed.layout, parsed.dataset_offset) == ("part10", len(meta))
    assert (parsed.record.study.study_instance_uid, parsed.record.series.series_instance_uid) == (
        STUDY,
        SERIES,
    )
    assert path.read_bytes() == before


def test_group_0002_without_prefix_is_no_meta(tmp_path: Path) -> None:
    """Group 0002 at offset 0 without 'DICM' is no Part 10 header: the caller must write
    a new one, and the data set starts after the stray group."""
    group2 = encode_file_meta(CT_IMAGE_STORAGE, INSTANCE, ImplicitVRLittleEndian)[132:]
    body = encode_dataset(minimal_dataset(), ImplicitVRLittleEndian)
    parsed = parse_instance(write_bytes(tmp_path / "g2.dcm", group2 + body))
    assert (parsed.layout, parsed.dataset_offset) == ("no-meta", len(group2))
    assert parsed.transfer_syntax_uid == ImplicitVRLittleEndian
    rebuilt = encode_file_meta(CT_IMAGE_STORAGE, INSTANCE, parsed.transfer_syntax_uid) + body
    again = parse_instance(write_bytes(tmp_path / "rebuilt.dcm", rebuilt))
    assert again.layout == "part10"
    assert again.record == parsed.record


def test_deflated_cut_at_an_element_boundary_is_still_truncated(tmp_path: Path) -> None:
    """A deflate stream without its final block is truncated, even when the inflated
    bytes happen to end between two elements."""
    ds = minimal_dataset()
    body = encode_dataset(ds)
    meta = encode_file_meta(CT_IMAGE_STORAGE, INSTANCE, DeflatedExplicitVRLittleEndian)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # Everything flushed but the stream left open: all elements are there, no last block.
    open_stream = deflater.compress(body) + deflater.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(CannotParse, match="deflated data set ends before its last block"):
        parse_instance(write_bytes(tmp_path / "open.dcm", meta + open_stream))
    complete = open_stream + deflater.flush()
    parsed = parse_instance(write_bytes(tmp_path / "done.dcm", meta + complete))
    assert parsed.record.instance.sop_instance_uid == INSTANCE


def _received(path: Path) -> tuple[str, str, str, bytes] | None:
    """A file as a C-STORE would bring it: the command's UIDs, the transfer syntax, the
    data set bytes after the file meta; None for what is not a stored instance."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        uids = (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID)
        syntax = meta.TransferSyntaxUID
    except Exception:
        return None
    data = path.read_bytes()
    if data[128:140] != b"DICM\x02\x00\x00\x00UL\x04\x00":  # with (0002,0000)
        return None
    (length,) = struct.unpack_from("<I", data, 140)
    return str(uids[0]), str(uids[1]), str(syntax), data[144 + length :]


def _outcome(parse: Callable[[], object]) -> object:
    try:
        return parse()
    except Exception as exc:
        return type(exc), str(exc)


def test_a_received_data_set_parses_as_its_joined_file() -> None:
    """parse_received (a C-STORE: the meta made for the data set, known, not read back,
    and never joined to it) gives what parse_instance_bytes gives for the joined bytes —
    the record, the metadata JSON, the warnings, or the same error — for every pydicom
    test file that is a Part 10 instance, whole and cut short."""
    from dicomvault.dicom.parse import parse_instance_bytes, parse_received
    from dicomvault.dicom.part10 import encode_file_meta_for, read_file_meta

    compared = 0
    for path in sorted(Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent.iterdir()):
        received = path.suffix == ".dcm" and _received(path)
        if not received:
            continue
        sop_class, sop_instance, syntax, dataset = received
        try:
            meta, known = encode_file_meta_for(sop_class, sop_instance, syntax, source_ae="PEER")
        except Exception:
            continue  # UIDs no C-STORE could carry
        assert read_file_meta(meta) == known
        for data in (dataset, bytearray(dataset[: len(dataset) // 2])):
            joined = _outcome(lambda: parse_instance_bytes(meta + data, name="x"))  # noqa: B023
            apart = _outcome(lambda: parse_received(meta, known, data, name="x"))  # noqa: B023
            assert joined == apart, path.name
            compared += 1
    assert compared > 100


def test_a_received_data_set_whose_uids_differ_from_the_command_is_refused() -> None:
    from dicomvault.dicom.parse import parse_received
    from dicomvault.dicom.part10 import encode_file_meta_for

    dataset = encode_dataset(minimal_dataset())
    meta, known = encode_file_meta_for(CT_IMAGE_STORAGE, INSTANCE + ".9", ExplicitVRLittleEndian)
    with pytest.raises(UIDMismatch, match=r"\(0002,0003\) '.*\.9' differs from SOP Instance UID"):
        parse_received(meta, known, dataset, name="the data set")
