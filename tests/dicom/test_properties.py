"""Properties that must hold for any input: truncation is always detected unless the
cut falls between two top-level elements, corrupt bytes only ever raise our typed errors,
and random data sets survive the DICOM JSON round trip."""

from __future__ import annotations

import contextlib
import json
import tempfile
from functools import cache
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomvault.dicom import parse_instance
from dicomvault.model.errors import CannotParse, InvalidInstance, MissingAttribute, NotDicom
from tests.dicom.files import bundled_file, deliberately_invalid, minimal_dataset, write_part10
from tests.dicom.test_dicomjson import _same_non_bulk

TRUNCATION_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "test-SR.dcm",
]
CORRUPTION_FILES = [*TRUNCATION_FILES, "image_dfl.dcm", "chrH31.dcm", "rtstruct.dcm"]


_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}


@cache
def _boundaries(name: str) -> tuple[int, frozenset[int]]:
    """Where the data set starts and where its top-level elements start and end, found
    with pydicom's own element generator (an independent reader)."""
    path = bundled_file(name)
    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    start = parse_instance(path).dataset_offset
    implicit, little = (bool(flag) for flag in meta.original_encoding)
    ends = {start}
    with open(path, "rb") as fp:
        fp.seek(start)
        for element in data_element_generator(fp, implicit, little, defer_size=16):
            header = 8 if implicit or element.VR not in _LONG else 12
            if isinstance(element, RawDataElement):
                ends.add(element.value_tell - header)
                ends.add(element.value_tell + element.length)
            else:
                # An undefined-length sequence, already read: it starts at its value
                # less the header, and ends where the next element starts.
                assert element.file_tell is not None
                ends.add(element.file_tell - header)
        ends.add(fp.tell())
    return start, frozenset(ends)


def _expect_for_cut(name: str, cut: int, path: Path) -> None:
    start, ends = _boundaries(name)
    if cut < start:
        with pytest.raises((NotDicom, CannotParse)):
            parse_instance(path)
    elif cut in ends:
        with contextlib.suppress(MissingAttribute):
            parse_instance(path)  # a shorter but complete data set
    else:
        with pytest.raises(CannotParse):
            parse_instance(path)


@pytest.mark.parametrize("name", TRUNCATION_FILES)
def test_cuts_in_the_header_are_detected(tmp_path: Path, name: str) -> None:
    data = bundled_file(name).read_bytes()
    pixel = max(data.rfind(b"\xe0\x7f\x10\x00"), data.rfind(b"\x7f\xe0\x00\x10"))
    limit = pixel + 16 if pixel > 0 else len(data)
    # Every offset of the first 2 KiB and around every element boundary; every 5th
    # elsewhere (the whole header of CT_small alone would take ten seconds).
    start, ends = _boundaries(name)
    cuts = set(range(0, min(limit, start + 2048))) | set(range(0, limit, 5))
    cuts |= {end + delta for end in ends for delta in (-2, -1, 0, 1, 2) if 0 <= end + delta < limit}
    path = tmp_path / "cut.dcm"
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        _expect_for_cut(name, cut, path)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(TRUNCATION_FILES), fraction=st.floats(0, 1, exclude_max=True))
def test_any_cut_is_detected(tmp_path: Path, name: str, fraction: float) -> None:
    data = bundled_file(name).read_bytes()
    cut = int(len(data) * fraction)
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:cut])
    _expect_for_cut(name, cut, path)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(CORRUPTION_FILES), data=st.data())
def test_corrupt_bytes_raise_only_typed_errors(
    tmp_path: Path, name: str, data: st.DataObject
) -> None:
    original = bytearray(bundled_file(name).read_bytes())
    header_end = min(len(original), 4096)
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, header_end - 1), st.integers(0, 255)), min_size=1, max_size=8
        )
    )
    for position, value in edits:
        original[position] = value
    path = tmp_path / "bad.dcm"
    path.write_bytes(bytes(original))
    try:
        parsed = parse_instance(path)
    except InvalidInstance:
        return
    json.loads(parsed.record.metadata_json)  # whatever came through is valid JSON


# -- random data sets through the JSON round trip ---------------------------------

ascii_text = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
    min_size=1,
    max_size=16,
)
latin1_text = st.text(
    st.characters(min_codepoint=0xC0, max_codepoint=0xFF, exclude_characters="×÷"),
    min_size=1,
    max_size=10,
)
unicode_text = st.text(
    st.characters(categories=["L"], max_codepoint=0xFFFF), min_size=1, max_size=10
)
code_strings = st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True)
decimals = st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{1,6})?", fullmatch=True)


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    charset = draw(st.sampled_from(["ISO_IR 6", "ISO_IR 100", "ISO_IR 192"]))
    words = {
        "ISO_IR 6": ascii_text.filter(lambda t: not set(t) & set("^=")),
        "ISO_IR 100": latin1_text,
        "ISO_IR 192": unicode_text,
    }[charset]
    with deliberately_invalid():
        ds = minimal_dataset(
            SpecificCharacterSet=charset,
            PatientName=f"{draw(words)}^{draw(words)}",
            PatientID=draw(ascii_text),
            StudyDescription=draw(words),
            ImageType=draw(st.lists(code_strings, min_size=1, max_size=4)),
            SliceThickness=draw(decimals),
            PixelSpacing=draw(st.lists(decimals, min_size=2, max_size=2)),
            InstanceNumber=str(draw(st.integers(-(2**31), 2**31 - 1))),
            Rows=draw(st.integers(0, 65535)),
        )
        ds.add_new(0x00189087, "FD", draw(st.floats(allow_nan=False, allow_infinity=False)))
        ds.add_new(0x00081161, "UL", draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)))
        items = []
        for value in draw(st.lists(code_strings, max_size=3)):
            item = Dataset()
            item.CodeValue = value
            item.CodeMeaning = draw(words)
            items.append(item)
        ds.AnatomicRegionSequence = Sequence(items)
    return ds


@settings(max_examples=80, deadline=None)
@given(
    ds=datasets(),
    ts=st.sampled_from(
        [
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian,
        ]
    ),
)
def test_random_data_sets_round_trip(ds: Dataset, ts: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_part10(Path(folder) / "r.dcm", ds, ts)
        record = parse_instance(path).record
        with deliberately_invalid():
            original = pydicom.dcmread(path)
            back = Dataset.from_json(record.metadata_json)
            assert _same_non_bulk(original, back) == []
            assert record.patient.patient_name == str(original.PatientName)
    assert record.warnings == ()
    model = json.loads(record.metadata_json)
    assert record.metadata_json == json.dumps(model, separators=(",", ":"), ensure_ascii=False)
    assert record.instance.instance_number == int(ds.InstanceNumber)
    assert record.instance.rows == ds.Rows
