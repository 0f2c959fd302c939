"""Archive.find per matching type (PS3.4 C.2.2.2), levels and models, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.archive import Archive
from dicomvault.model.query import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, Match
from tests.query.corpus import Spec, query, store

STUDY_UID = 0x0020000D
NAME = 0x00100010


@pytest.fixture
def specs(archive: Archive, tmp_path: Path) -> list[Spec]:
    specs = [
        Spec(
            "P1",
            "Smith^John",
            "20240105",
            "083000",
            "ACC1",
            "CT head",
            [("CT", 2), ("SR", 1)],
            birth_date="19700101",
            manufacturer="ACME",
        ),
        Spec("P1", "Smith^John", "20240210", "101500", "ACC2", "MR knee", [("MR", 1)]),
        Spec("P2", "smithers^Wayland", "20240131", "235959", "100%_off", "50% dose"),
        Spec("P3", "Ya_ma%da^Ta\u00e9", "20231231", "120000", "A_C", "x_y", [("CT", 1)]),
        Spec("P4", "M\u00dcLLER^J\u00fcrgen", "20240301", "", "", ""),
        Spec(
            "P5",
            "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
            "20240115",
            "093000",
            charset="\\ISO 2022 IR 87",
        ),
    ]
    store(archive, tmp_path / "in", specs)
    return specs


def uids(result: object) -> list[str]:
    return sorted(str(m.values[STUDY_UID]) for m in result)  # type: ignore[attr-defined]


def study_uids(specs: list[Spec], *indexes: int) -> list[str]:
    return sorted(specs[i].uid for i in indexes)


def test_universal_returns_every_study(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.3: a zero-length key matches everything and is returned."""
    matches = list(archive.find(query("STUDY", StudyDate="", PatientName="")))
    assert len(matches) == len(specs)
    first = next(m for m in matches if m.values[STUDY_UID] == specs[0].uid)
    assert first.values[NAME] == "Smith^John"
    assert first.values[QUERY_RETRIEVE_LEVEL] == "STUDY"
    assert first.values[0x00080020] == "20240105"


def test_single_value_is_exact_and_case_sensitive(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.1: single value matching; case-sensitive except PN."""
    assert uids(archive.find(query("STUDY", AccessionNumber="ACC1"))) == study_uids(specs, 0)
    assert uids(archive.find(query("STUDY", AccessionNumber="acc1"))) == []
    assert uids(archive.find(query("STUDY", StudyDescription="CT HEAD"))) == []


def test_person_names_case_insensitive(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.1 PN: case-insensitive by default (query.case_insensitive_names)."""
    assert uids(archive.find(query("STUDY", PatientName="SMITH^JOHN"))) == study_uids(specs, 0, 1)
    assert uids(archive.find(query("STUDY", PatientName="m\u00fcller*"))) == study_uids(specs, 4)


def test_person_names_case_sensitive_setting(settings: object, tmp_path: Path) -> None:
    settings.query.case_insensitive_names = False  # type: ignore[attr-defined]
    with Archive.open(settings) as archive:  # type: ignore[arg-type]
        specs = [Spec("P1", "Smith^John")]
        store(archive, tmp_path / "in", specs)
        assert uids(archive.find(query("STUDY", PatientName="SMITH*"))) == []
        assert uids(archive.find(query("STUDY", PatientName="Smith*"))) == [specs[0].uid]


def test_wildcards(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.4: * and ?; literal %, _ are not SQL wild cards."""
    assert uids(archive.find(query("STUDY", PatientName="smith*"))) == study_uids(specs, 0, 1, 2)
    assert uids(archive.find(query("STUDY", PatientName="Smit?^*"))) == study_uids(specs, 0, 1)
    assert uids(archive.find(query("STUDY", AccessionNumber="100%*"))) == study_uids(specs, 2)
    assert uids(archive.find(query("STUDY", AccessionNumber="A?C"))) == study_uids(specs, 3)
    assert uids(archive.find(query("STUDY", AccessionNumber="A_*"))) == study_uids(specs, 3)
    assert uids(archive.find(query("STUDY", AccessionNumber="AC%"))) == []
    assert uids(archive.find(query("STUDY", StudyDescription="50%*"))) == study_uids(specs, 2)
    assert uids(archive.find(query("STUDY", PatientName="ya_ma%da*"))) == study_uids(specs, 3)
    assert uids(archive.find(query("STUDY", PatientName="ya?ma?da*"))) == study_uids(specs, 3)
    assert uids(archive.find(query("STUDY", PatientName="ya%"))) == []


def test_person_name_component_groups(archive: Archive, specs: list[Spec]) -> None:
    """PS3.5 6.2.1.2 groups: each key group matches the same stored group."""
    assert uids(archive.find(query("STUDY", PatientName="=\u5c71\u7530*"))) == study_uids(specs, 5)
    assert uids(archive.find(query("STUDY", PatientName="yamada^tarou"))) == study_uids(specs, 5)
    assert uids(archive.find(query("STUDY", PatientName="*=*=\u3084\u307e*"))) == study_uids(
        specs, 5
    )
    assert uids(archive.find(query("STUDY", PatientName="*\u5c71*"))) == []


def test_uid_list(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.2: a list of UIDs matches any of them."""
    value = f"{specs[0].uid}\\{specs[3].uid}\\1.2.3"
    assert uids(archive.find(query("STUDY", StudyInstanceUID=value))) == study_uids(specs, 0, 3)


def test_date_and_time_ranges(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.5: closed and open ranges of DA and TM."""
    assert uids(archive.find(query("STUDY", StudyDate="20240101-20240131"))) == study_uids(
        specs, 0, 2, 5
    )
    assert uids(archive.find(query("STUDY", StudyDate="20240201-"))) == study_uids(specs, 1, 4)
    assert uids(archive.find(query("STUDY", StudyDate="-20231231"))) == study_uids(specs, 3)
    assert uids(archive.find(query("STUDY", StudyTime="0800-0930"))) == study_uids(specs, 0, 5)
    assert uids(archive.find(query("STUDY", StudyTime="2359-"))) == study_uids(specs, 2)
    assert uids(archive.find(query("STUDY", StudyDate="20240105"))) == study_uids(specs, 0)


def test_combined_date_time(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.5 combined date-time matching (negotiated)."""
    q = query("STUDY", combined=True, StudyDate="20240105-20240131", StudyTime="090000-120000")
    # 20240105 083000 is before the start; 20240115 093000 inside; 20240131 235959 after.
    assert uids(archive.find(q)) == study_uids(specs, 5)
    q = query("STUDY", StudyDate="20240105-20240131", StudyTime="090000-120000")
    assert uids(archive.find(q)) == study_uids(specs, 5)
    q = query("STUDY", combined=True, StudyDate="20240105-20240131", StudyTime="080000-")
    assert uids(archive.find(q)) == study_uids(specs, 0, 2, 5)


def test_empty_value_matching(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.2.2.2.7: "" matches entities whose value is empty or absent."""
    assert uids(archive.find(query("STUDY", AccessionNumber='""'))) == study_uids(specs, 4, 5)


def test_multi_valued_and_computed_keys(archive: Archive, specs: list[Spec]) -> None:
    """ModalitiesInStudy and the Number of … Related … keys are answered from columns."""
    found = list(
        archive.find(
            query(
                "STUDY",
                ModalitiesInStudy="SR",
                NumberOfStudyRelatedInstances="",
                NumberOfStudyRelatedSeries="",
            )
        )
    )
    assert [m.values[STUDY_UID] for m in found] == [specs[0].uid]
    assert found[0].values[0x00080061] == ["CT", "SR"]
    assert found[0].values[0x00201208] == 3
    assert found[0].values[0x00201206] == 2
    # Several values: any of them (PS3.4 C.2.2.2.8 note 4 leaves it to the SCP).
    ct_or_mr = sorted(s.uid for s in specs if any(m in ("CT", "MR") for m, _ in s.series))
    assert uids(archive.find(query("STUDY", ModalitiesInStudy="CT\\MR"))) == ct_or_mr
    assert uids(archive.find(query("STUDY", ModalitiesInStudy="S*"))) == study_uids(specs, 0)


def test_patient_level(archive: Archive, specs: list[Spec]) -> None:
    q = query(
        "PATIENT",
        model="PATIENT",
        PatientID="P1",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
        PatientName="",
    )
    [match] = list(archive.find(q))
    assert match.values[0x00100020] == "P1"
    assert match.values[0x00201200] == 2
    assert match.values[0x00201204] == 4
    assert match.values[NAME] == "Smith^John"


def test_series_and_image_levels_both_models(archive: Archive, specs: list[Spec]) -> None:
    for model in ("PATIENT", "STUDY"):
        q = query(
            "SERIES",
            model=model,
            StudyInstanceUID=specs[0].uid,
            Modality="",
            NumberOfSeriesRelatedInstances="",
        )
        found = sorted((m.values[0x00080060], m.values[0x00201209]) for m in archive.find(q))
        assert found == [("CT", 2), ("SR", 1)]
        q = query(
            "IMAGE",
            model=model,
            StudyInstanceUID=specs[0].uid,
            SeriesInstanceUID=specs[0].series_uids[0],
            SOPInstanceUID="",
            InstanceNumber="",
        )
        found_images = sorted(str(m.values[0x00080018]) for m in archive.find(q))
        assert found_images == sorted(specs[0].instance_uids[:2])


def test_keys_from_metadata(archive: Archive, specs: list[Spec]) -> None:
    """Keys that are not columns: matched and answered from the stored metadata."""
    found = list(archive.find(query("IMAGE", Manufacturer="AC*", SOPInstanceUID="")))
    assert len(found) == 3
    assert {m.values[0x00080070] for m in found} == {"ACME"}
    found = list(archive.find(query("STUDY", Manufacturer="")))
    assert {m.values[0x00080070] for m in found} == {"ACME", None}


def test_relational_query(archive: Archive, specs: list[Spec]) -> None:
    """PS3.4 C.4.1.2.2: keys below the level match through the entities below."""
    q = query("STUDY", relational=True, Modality="SR")
    found = list(archive.find(q))
    assert [m.values[STUDY_UID] for m in found] == [specs[0].uid]
    assert found[0].values[0x00080060] is None


def test_character_set_of_the_data(archive: Archive, specs: list[Spec]) -> None:
    [match] = list(archive.find(query("STUDY", StudyInstanceUID=specs[5].uid)))
    assert match.values[SPECIFIC_CHARACTER_SET] == ["", "ISO 2022 IR 87"]


def test_max_results(archive: Archive, specs: list[Spec]) -> None:
    result = archive.find(query("STUDY", max_results=2))
    assert len(list(result)) == 2
    assert result.truncated
    result = archive.find(query("STUDY", max_results=6))
    assert len(list(result)) == 6
    assert not result.truncated
    archive.settings.query.max_results = 3
    result = archive.find(query("STUDY", PatientName="*"))
    assert len(list(result)) == 3 and result.truncated


def test_max_results_with_python_recheck(archive: Archive, specs: list[Spec]) -> None:
    result = archive.find(query("IMAGE", Manufacturer="ACME", max_results=2))
    assert len(list(result)) == 2 and result.truncated


def test_matches_are_plain_values(archive: Archive, specs: list[Spec]) -> None:
    for match in archive.find(query("STUDY")):
        assert isinstance(match, Match)
