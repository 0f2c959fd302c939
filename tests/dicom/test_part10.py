"""File Meta Information encoding and layout detection (PS3.10 7.1)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

import dicomvault
from dicomvault.dicom.part10 import encode_file_meta, read_file_meta, read_preamble_layout
from dicomvault.model.errors import CannotParse, InvalidUID, NotDicom
from tests.dicom.files import CT_IMAGE_STORAGE, bundled_file, encode_dataset, minimal_dataset

uid_components = st.one_of(st.just("0"), st.integers(1, 10**12).map(str))
uids = (
    st.lists(uid_components, min_size=2, max_size=12).map(".".join).filter(lambda u: len(u) <= 64)
)


def _read_back(meta: bytes, tmp_path: Path) -> pydicom.dataset.FileMetaDataset:
    path = tmp_path / "meta.dcm"
    path.write_bytes(meta)
    return read_file_meta_info(path)


def test_meta_is_read_back_by_pydicom(tmp_path: Path) -> None:
    meta = encode_file_meta(CT_IMAGE_STORAGE, "1.2.3.4", JPEG2000Lossless, source_ae="MODALITY1")
    assert meta[:128] == bytes(128)
    assert meta[128:132] == b"DICM"
    info = _read_back(meta, tmp_path)
    assert info.FileMetaInformationVersion == b"\x00\x01"
    assert info.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert info.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert info.TransferSyntaxUID == JPEG2000Lossless
    assert info.ImplementationClassUID == dicomvault.IMPLEMENTATION_CLASS_UID
    assert info.ImplementationVersionName == dicomvault.IMPLEMENTATION_VERSION_NAME
    assert info.SourceApplicationEntityTitle == "MODALITY1"
    # (0002,0000) counts every byte after itself (PS3.10 7.1).
    assert info.FileMetaInformationGroupLength == len(meta) - 132 - 12


def test_meta_without_source_ae_has_no_0002_0016(tmp_path: Path) -> None:
    info = _read_back(encode_file_meta(CT_IMAGE_STORAGE, "1.2.3", ExplicitVRLittleEndian), tmp_path)
    assert "SourceApplicationEntityTitle" not in info


def test_meta_pads_uids_to_even_length_with_null() -> None:
    meta = encode_file_meta(CT_IMAGE_STORAGE, "1.2.345", ExplicitVRLittleEndian)
    at = meta.index(b"\x02\x00\x03\x00UI")
    (length,) = struct.unpack_from("<H", meta, at + 6)
    assert length == 8
    assert meta[at + 8 : at + 16] == b"1.2.345\x00"


def test_meta_is_byte_stable() -> None:
    args = (CT_IMAGE_STORAGE, "1.2.3.4.5", ImplicitVRLittleEndian)
    first = encode_file_meta(*args, source_ae="A")
    assert first == encode_file_meta(*args, source_ae="A")
    # Elements in ascending tag order, and the exact bytes of the fixed part.
    assert first[132:144] == b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<L", len(first) - 144)
    assert first[144:158] == b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"


@pytest.mark.parametrize("bad", ["1.2.abc", "../../etc/x", "1." + "2" * 70, ""])
def test_meta_refuses_invalid_uids(bad: str) -> None:
    with pytest.raises(InvalidUID):
        encode_file_meta(CT_IMAGE_STORAGE, bad, ExplicitVRLittleEndian)


@pytest.mark.parametrize("ae", ["", "   ", "A" * 17, "BAD\\AE", "TAB\tAE"])
def test_meta_refuses_invalid_source_ae(ae: str) -> None:
    with pytest.raises(ValueError, match="Source AE"):
        encode_file_meta(CT_IMAGE_STORAGE, "1.2.3", ExplicitVRLittleEndian, source_ae=ae)


@given(sop_class=uids, sop_instance=uids, ts=uids)
def test_meta_round_trips_through_pydicom_and_layout(
    sop_class: str, sop_instance: str, ts: str
) -> None:
    meta = encode_file_meta(sop_class, sop_instance, ts)
    info = pydicom.dcmread(io.BytesIO(meta)).file_meta
    assert info.MediaStorageSOPClassUID == sop_class
    assert info.MediaStorageSOPInstanceUID == sop_instance
    assert info.TransferSyntaxUID == ts
    assert len(meta) % 2 == 0
    data = meta + encode_dataset(minimal_dataset())
    assert read_preamble_layout(data) == ("part10", len(meta))
    parsed = read_file_meta(data)
    assert (parsed.transfer_syntax_uid, parsed.media_storage_sop_instance_uid) == (ts, sop_instance)


def test_layout_part10_matches_pydicom() -> None:
    data = bundled_file("CT_small.dcm").read_bytes()
    info = read_file_meta_info(bundled_file("CT_small.dcm"))
    assert read_preamble_layout(data[:65536]) == (
        "part10",
        132 + 12 + info.FileMetaInformationGroupLength,
    )


def test_layout_without_preamble() -> None:
    data = bundled_file("CT_small.dcm").read_bytes()[128:]
    layout, offset = read_preamble_layout(data)
    assert layout == "no-preamble"
    assert data[offset : offset + 4] == b"\x08\x00\x05\x00"  # (0008,0005) follows the meta


@pytest.mark.parametrize(
    "name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "rtstruct.dcm"]
)
def test_layout_without_meta(name: str) -> None:
    assert read_preamble_layout(bundled_file(name).read_bytes()) == ("no-meta", 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world: not an image at all\n" * 20,
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"%PDF-1.7\n" + bytes(300),
    ],
)
def test_not_dicom(data: bytes) -> None:
    with pytest.raises(NotDicom):
        read_preamble_layout(data)


def test_truncated_meta_cannot_parse() -> None:
    data = bundled_file("CT_small.dcm").read_bytes()
    for cut in (133, 140, 150, 200):
        with pytest.raises(CannotParse):
            read_preamble_layout(data[:cut])


def test_meta_longer_than_head_cannot_parse() -> None:
    # A meta element declaring more bytes than the 64 KiB the caller may pass.
    huge = b"\x02\x00\x02\x00UI" + struct.pack("<H", 0xFFFE) + b"1" * 0xFFFE
    data = bytes(128) + b"DICM" + huge
    with pytest.raises(CannotParse, match=r"\(0002,0002\)"):
        read_preamble_layout(data[:65536])
