"""Additional keys from stored metadata, and sequence matching (PS3.4 C.2.2.2.6)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from dicomvault.archive import Archive
from dicomvault.model.query import InformationModel, Level, Query, QueryKey
from tests.core.dicomfiles import make_dataset, write_part10

RAS = 0x00400275
SPS_ID = 0x00400009
RP_ID = 0x00401001


def _store(archive: Archive, tmp_path: Path) -> str:
    ds = make_dataset()
    items = []
    for sps, rp in (("SPS1", "RP1"), ("SPS2", "RP2")):
        item = Dataset()
        item.ScheduledProcedureStepID = sps
        item.RequestedProcedureID = rp
        items.append(item)
    ds.RequestAttributesSequence = items
    ds.Manufacturer = "ACME"
    ds.SliceThickness = "1.25"
    write_part10(ds, tmp_path / "a.dcm")
    archive.store_file(tmp_path / "a.dcm")
    return str(ds.SOPInstanceUID)


def _query(level: Level, *keys: QueryKey) -> Query:
    return Query(InformationModel.STUDY_ROOT, level, keys)


def test_sequence_matching_returns_matching_items(archive: Archive, tmp_path: Path) -> None:
    _store(archive, tmp_path)
    key = QueryKey(
        RAS,
        "RequestAttributesSequence",
        "SQ",
        None,
        (
            QueryKey(SPS_ID, "ScheduledProcedureStepID", "SH", "SPS2"),
            QueryKey(RP_ID, "RequestedProcedureID", "SH", ""),
        ),
    )
    [match] = list(archive.find(_query(Level.IMAGE, key)))
    assert match.values[RAS] == [{SPS_ID: "SPS2", RP_ID: "RP2"}]
    miss = QueryKey(
        RAS,
        "RequestAttributesSequence",
        "SQ",
        None,
        (
            QueryKey(SPS_ID, "ScheduledProcedureStepID", "SH", "SPS2"),
            QueryKey(RP_ID, "RequestedProcedureID", "SH", "RP1"),  # in another item
        ),
    )
    assert list(archive.find(_query(Level.IMAGE, miss))) == []


def test_zero_length_sequence_item_returns_the_sequence(archive: Archive, tmp_path: Path) -> None:
    _store(archive, tmp_path)
    key = QueryKey(RAS, "RequestAttributesSequence", "SQ", None, ())
    [match] = list(archive.find(_query(Level.STUDY, key)))
    assert match.values[RAS] == [{SPS_ID: "SPS1", RP_ID: "RP1"}, {SPS_ID: "SPS2", RP_ID: "RP2"}]


def test_additional_keys(archive: Archive, tmp_path: Path) -> None:
    _store(archive, tmp_path)
    keys = (
        QueryKey(0x00080070, "Manufacturer", "LO", "AC?E"),
        QueryKey(0x00180050, "SliceThickness", "DS", "1.250"),
        QueryKey(0x00181030, "ProtocolName", "LO", ""),
    )
    [match] = list(archive.find(_query(Level.SERIES, *keys)))
    assert match.values[0x00080070] == "ACME"
    assert match.values[0x00180050] == "1.25"
    assert match.values[0x00181030] is None
    none = list(
        archive.find(_query(Level.SERIES, QueryKey(0x00180050, "SliceThickness", "DS", "2")))
    )
    assert none == []


def test_instance_availability(archive: Archive, tmp_path: Path) -> None:
    """PS3.4 C.6.1.1.5: every stored instance is ONLINE."""
    _store(archive, tmp_path)
    key = QueryKey(0x00080056, "InstanceAvailability", "CS", "")
    [match] = list(archive.find(_query(Level.STUDY, key)))
    assert match.values[0x00080056] == "ONLINE"
    offline = QueryKey(0x00080056, "InstanceAvailability", "CS", "OFFLINE")
    assert list(archive.find(_query(Level.STUDY, offline))) == []
