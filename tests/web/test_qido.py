"""QIDO-RS (PS3.18 10.6) through the real server: routes, matching, includefield, paging,
warnings, media types, character sets, bad input, OHIF's requests and dicomweb-client."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from tests.core.dicomfiles import make_dataset, write_part10
from tests.web.conftest import WebServer, start_web, web_settings

ROOT = "1.2.826.0.1.3680043.8.498.77"
STUDY1, STUDY2, STUDY3 = f"{ROOT}.1", f"{ROOT}.2", f"{ROOT}.3"
SERIES11, SERIES12, SERIES21, SERIES31 = (
    f"{ROOT}.1.1", f"{ROOT}.1.2", f"{ROOT}.2.1", f"{ROOT}.3.1",
)
NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


def _store(web: WebServer, tmp: Path, sop: str, study: str, series: str, **attrs: Any) -> None:
    charset = attrs.pop("SpecificCharacterSet", None)
    name = attrs.pop("PatientName", "Doe^John")
    ds: Dataset = make_dataset(
        sop_instance_uid=sop, study=study, series=series, name=name, charset=charset
    )
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    web.archive.store_file(write_part10(ds, tmp / f"{sop}.dcm"))


def _populate(web: WebServer, tmp: Path) -> None:
    """Three studies: a Latin-1 name with two series (CT, MR), a plain ASCII one, and
    a Japanese (UTF-8) one."""
    study1 = {
        "PatientName": "Ünsal^Jürgen", "SpecificCharacterSet": "ISO_IR 100",
        "PatientID": "P1", "StudyDate": "20200315", "StudyTime": "101500",
        "StudyDescription": "Chest CT", "AccessionNumber": "ACC1",
        "PatientBirthDate": "19700101", "ReferringPhysicianName": "Who^Doctor",
        "PatientSex": "M", "StudyID": "S1",
    }
    _store(web, tmp, f"{SERIES11}.1", STUDY1, SERIES11, **study1, Modality="CT",
           SeriesNumber=1, SeriesDescription="Axial", InstanceNumber=1)
    _store(web, tmp, f"{SERIES11}.2", STUDY1, SERIES11, **study1, Modality="CT",
           SeriesNumber=1, SeriesDescription="Axial", InstanceNumber=2)
    _store(web, tmp, f"{SERIES12}.1", STUDY1, SERIES12, **study1, Modality="MR",
           SeriesNumber=2, SeriesDescription="T1", SeriesDate="20200316", InstanceNumber=1)
    _store(web, tmp, f"{SERIES21}.1", STUDY2, SERIES21, PatientName="Doe^John",
           PatientID="P2", StudyDate="20210610", StudyDescription="Brain MR",
           AccessionNumber="ACC2", Modality="MR", SeriesNumber=1, InstanceNumber=1)
    _store(web, tmp, f"{SERIES31}.1", STUDY3, SERIES31, PatientName="山田^太郎",
           SpecificCharacterSet="ISO_IR 192", PatientID="P3", StudyDate="20220101",
           StudyDescription="Abdomen", AccessionNumber="ACC3", Modality="CT",
           SeriesNumber=1, InstanceNumber=1)


@pytest.fixture
def archive(web: WebServer, tmp_path: Path) -> WebServer:
    """Both index backends, populated."""
    _populate(web, tmp_path)
    return web


@pytest.fixture
def sqlite(web_sqlite: WebServer, tmp_path: Path) -> WebServer:
    """SQLite only, populated."""
    _populate(web_sqlite, tmp_path)
    return web_sqlite


def _get(web: WebServer, path: str, **kwargs: Any) -> Any:
    response = web.client.get("/dicom-web" + path, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return response.json()


def _values(dataset: dict[str, Any], tag: str) -> list[Any] | None:
    element = dataset.get(tag)
    assert element is not None, f"{tag} missing from {sorted(dataset)}"
    values: list[Any] | None = element.get("Value")
    return values


def _first(dataset: dict[str, Any], tag: str) -> Any:
    values = _values(dataset, tag)
    return values[0] if values else None


def _uids(datasets: list[dict[str, Any]], tag: str) -> list[str]:
    return [_first(d, tag) for d in datasets]


# -- routes and returned attributes ------------------------------------------------------


STUDY_TAGS = {
    "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00080201",
    "00081190", "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010",
    "00201206", "00201208",
}
SERIES_TAGS = {
    "00080060", "00080201", "0008103E", "00081190", "0020000E", "00200011", "00201209",
    "00400244", "00400245", "00400275",
}
INSTANCE_TAGS = {
    "00080016", "00080018", "00080056", "00080201", "00081190", "00200013", "00280010",
    "00280011", "00280100", "00280008",
}


def test_studies_return_the_required_attributes(archive: WebServer) -> None:
    studies = _get(archive, "/studies")
    assert _uids(studies, "0020000D") == [STUDY1, STUDY2, STUDY3]
    first = studies[0]
    assert set(first) >= STUDY_TAGS
    assert "00080052" not in first  # Query/Retrieve Level is C-FIND's, not QIDO's
    assert _first(first, "00081190") == f"{archive.dicomweb}/studies/{STUDY1}"
    assert _first(first, "00080056") == "ONLINE"
    assert _values(first, "00080061") == ["CT", "MR"]
    assert _first(first, "00201206") == 2
    assert _first(first, "00201208") == 3
    assert _first(first, "00100010") == {"Alphabetic": "Ünsal^Jürgen"}
    assert _first(first, "00080030") == "101500"
    assert list(first) == sorted(first)


def test_series_of_a_study_and_all_series(archive: WebServer) -> None:
    series = _get(archive, f"/studies/{STUDY1}/series")
    assert _uids(series, "0020000E") == [SERIES11, SERIES12]
    assert set(series[0]) >= SERIES_TAGS
    assert "00100010" not in series[0]  # study attributes only for All Series
    assert _first(series[1], "00081190") == (
        f"{archive.dicomweb}/studies/{STUDY1}/series/{SERIES12}"
    )
    assert _first(series[0], "00201209") == 2
    everything = _get(archive, "/series")
    assert _uids(everything, "0020000E") == [SERIES11, SERIES12, SERIES21, SERIES31]
    assert set(everything[0]) >= SERIES_TAGS | STUDY_TAGS
    mr = _get(archive, "/series", params={"Modality": "MR"})
    assert _uids(mr, "0020000E") == [SERIES12, SERIES21]
    by_patient = _get(archive, "/series", params={"PatientID": "P1"})
    assert _uids(by_patient, "0020000E") == [SERIES11, SERIES12]


def test_instance_routes(archive: WebServer) -> None:
    of_series = _get(archive, f"/studies/{STUDY1}/series/{SERIES11}/instances")
    assert _uids(of_series, "00080018") == [f"{SERIES11}.1", f"{SERIES11}.2"]
    assert set(of_series[0]) >= INSTANCE_TAGS
    assert _first(of_series[1], "00081190") == (
        f"{archive.dicomweb}/studies/{STUDY1}/series/{SERIES11}/instances/{SERIES11}.2"
    )
    assert _first(of_series[0], "00280010") == 4
    of_study = _get(archive, f"/studies/{STUDY1}/instances")
    assert _uids(of_study, "00080018") == [f"{SERIES11}.1", f"{SERIES11}.2", f"{SERIES12}.1"]
    assert set(of_study[0]) >= INSTANCE_TAGS | SERIES_TAGS
    assert _first(of_study[2], "00080060") == "MR"
    everything = _get(archive, "/instances", params={"Modality": "CT"})
    assert len(everything) == 3
    assert set(everything[0]) >= INSTANCE_TAGS | SERIES_TAGS | STUDY_TAGS
    numbered = _get(archive, "/instances", params={"InstanceNumber": "2"})
    assert _uids(numbered, "00080018") == [f"{SERIES11}.2"]


# -- matching (both backends) ------------------------------------------------------------


def test_matching_rules(archive: WebServer) -> None:
    def studies(**params: str) -> list[str]:
        response = archive.client.get("/dicom-web/studies", params=params)
        if response.status_code == 204:
            return []
        assert response.status_code == 200, response.text
        return _uids(response.json(), "0020000D")

    assert studies(PatientName="doe*") == [STUDY2]  # case-insensitive names
    assert studies(PatientName="*sal*") == [STUDY1]
    assert studies(PatientName="ünsal^jürgen") == [STUDY1]
    assert studies(PatientName="山田*") == [STUDY3]
    assert studies(**{"00100020": "P?"}) == [STUDY1, STUDY2, STUDY3]
    assert studies(**{"00100020": "*2*"}) == [STUDY2]
    assert studies(StudyDate="20200101-20211231") == [STUDY1, STUDY2]
    assert studies(StudyDate="20220101") == [STUDY3]
    assert studies(StudyDate="-20201231") == [STUDY1]
    assert studies(ModalitiesInStudy="MR") == [STUDY1, STUDY2]
    assert studies(AccessionNumber="*3*") == [STUDY3]
    assert studies(StudyDescription="*CT*") == [STUDY1]
    assert studies(StudyInstanceUID=f"{STUDY1},{STUDY3}") == [STUDY1, STUDY3]
    assert studies(PatientName="Nobody") == []


def test_repeated_uid_keys_are_a_list(archive: WebServer) -> None:
    response = archive.client.get(
        "/dicom-web/studies", params=[("StudyInstanceUID", STUDY2), ("0020000D", STUDY3)]
    )
    assert _uids(response.json(), "0020000D") == [STUDY2, STUDY3]


def test_no_match_is_204_without_body(archive: WebServer) -> None:
    response = archive.client.get("/dicom-web/studies", params={"PatientID": "nobody"})
    assert response.status_code == 204
    assert response.content == b""


def test_paging_covers_the_set_without_overlap(archive: WebServer) -> None:
    seen: list[str] = []
    for offset in range(0, 6, 2):  # bounded: 3 pages of 2 over 4 series
        response = archive.client.get(
            "/dicom-web/series", params={"limit": 2, "offset": offset}
        )
        if response.status_code == 204:
            break
        page = _uids(response.json(), "0020000E")
        assert len(page) <= 2
        more = "Warning" in response.headers
        assert more == (offset + len(page) < 4)
        seen.extend(page)
    assert seen == [SERIES11, SERIES12, SERIES21, SERIES31]


def test_offset_counts_matches_rechecked_outside_sql(archive: WebServer) -> None:
    # A wild card over the multi-valued Modalities in Study column is rechecked in
    # Python: the offset must skip matches, not candidate rows.
    first = _get(archive, "/studies", params={"ModalitiesInStudy": "M*", "limit": 1})
    second = _get(
        archive, "/studies", params={"ModalitiesInStudy": "M*", "limit": 1, "offset": 1}
    )
    assert _uids(first, "0020000D") == [STUDY1]
    assert _uids(second, "0020000D") == [STUDY2]


# -- includefield ------------------------------------------------------------------------


def test_includefield_keyword_tag_and_all(sqlite: WebServer) -> None:
    plain = _get(sqlite, "/studies", params={"limit": 1})[0]
    assert "00081030" not in plain
    by_tag = _get(sqlite, "/studies", params={"includefield": "00081030,00100021"})[0]
    assert _first(by_tag, "00081030") == "Chest CT"
    assert "00100021" in by_tag
    by_keyword = _get(
        sqlite, "/studies", params=[("includefield", "StudyDescription"),
                                    ("includefield", "PatientBirthDate")]
    )[0]
    assert _first(by_keyword, "00081030") == "Chest CT"
    assert _first(by_keyword, "00100030") == "19700101"
    everything = _get(sqlite, "/studies", params={"includefield": "all"})[0]
    assert {"00081030", "00101010", "00080062", "00100021"} <= set(everything)
    assert "0008103E" not in everything  # a series attribute
    # an attribute the index has no column for comes from the stored metadata
    from_metadata = _get(sqlite, "/studies", params={"includefield": "BitsStored"})[0]
    assert _first(from_metadata, "00280101") == 16


def test_includefield_below_the_level_is_not_returned(sqlite: WebServer) -> None:
    studies = _get(sqlite, "/studies", params={"includefield": "00080060,SOPClassUID"})
    assert "00080060" not in studies[0]
    assert "00080016" not in studies[0]


# -- OHIF ----------------------------------------------------------------------------------


def test_ohif_study_list_and_series_requests(sqlite: WebServer) -> None:
    accept = {"Accept": "application/dicom+json"}
    query = (
        "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030,00080060,00080090,00100030"
    )
    response = sqlite.client.get(query, headers=accept)
    assert response.status_code == 200
    assert "Warning" not in response.headers
    studies = response.json()
    assert len(studies) == 3
    for tag in ("0020000D", "00080020", "00080030", "00080050", "00100020", "00100010",
                "00100030", "00201208", "00081030", "00080061", "00080090"):
        assert tag in studies[0], tag
    filters = [
        "PatientName=*sal*", "00100020=*1*", "AccessionNumber=*ACC1*",
        "StudyDescription=*Chest*", "ModalitiesInStudy=CT&PatientID=P1",
        "StudyDate=20200101-20201231",
        f"StudyInstanceUID={STUDY1}",
    ]
    for extra in filters:
        found = sqlite.client.get(f"{query}&{extra}", headers=accept)
        assert found.status_code == 200, (extra, found.text)
        assert _uids(found.json(), "0020000D") == [STUDY1], extra
    for includes in ("0008103E,00080021", "00080021,00080031,0008103E,00200011"):
        series = sqlite.client.get(
            f"/dicom-web/studies/{STUDY1}/series?includefield={includes}", headers=accept
        ).json()
        assert _first(series[0], "0008103E") == "Axial"
        assert _first(series[1], "00080021") == "20200316"
        for tag in ("0020000E", "00080060", "00200011", "00201209", "0008103E"):
            assert tag in series[0], tag


# -- warnings -------------------------------------------------------------------------------


def test_truncation_by_limit_warns(sqlite: WebServer) -> None:
    response = sqlite.client.get("/dicom-web/studies", params={"limit": 2})
    assert len(response.json()) == 2
    assert response.headers["Warning"].startswith("299 ")
    assert "additional results" in response.headers["Warning"]
    last = sqlite.client.get("/dicom-web/studies", params={"limit": 2, "offset": 2})
    assert len(last.json()) == 1
    assert "Warning" not in last.headers


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(
        web_settings(tmp_path, query={"max_results": 2}, http={"default_limit": 0})
    )


def test_truncation_by_the_server_cap_warns(capped: WebServer, tmp_path: Path) -> None:
    _populate(capped, tmp_path)
    response = capped.client.get("/dicom-web/studies", params={"limit": 50})
    assert len(response.json()) == 2
    assert "additional results" in response.headers["Warning"]


@pytest.fixture
def default_limit(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path, http={"default_limit": 1}))


def test_default_limit_applies_without_limit(default_limit: WebServer, tmp_path: Path) -> None:
    _populate(default_limit, tmp_path)
    assert len(_get(default_limit, "/studies")) == 1
    assert len(_get(default_limit, "/studies", params={"limit": 3})) == 3


def test_fuzzymatching_true_warns_and_matches_literally(sqlite: WebServer) -> None:
    response = sqlite.client.get(
        "/dicom-web/studies", params={"fuzzymatching": "true", "PatientName": "Doe*"}
    )
    assert _uids(response.json(), "0020000D") == [STUDY2]
    assert "fuzzymatching parameter is not supported" in response.headers["Warning"]
    plain = sqlite.client.get("/dicom-web/studies", params={"fuzzymatching": "false"})
    assert "Warning" not in plain.headers


# -- character sets --------------------------------------------------------------------------


def test_non_ascii_names_and_character_set(sqlite: WebServer) -> None:
    studies = _get(sqlite, "/studies")
    by_uid = {_first(s, "0020000D"): s for s in studies}
    assert _first(by_uid[STUDY3], "00100010") == {"Alphabetic": "山田^太郎"}
    assert _values(by_uid[STUDY3], "00080005") == ["ISO_IR 192"]
    assert _values(by_uid[STUDY1], "00080005") == ["ISO_IR 192"]
    assert "00080005" not in by_uid[STUDY2]  # plain ASCII: no character set needed
    found = sqlite.client.get("/dicom-web/studies?PatientName=%E5%B1%B1%E7%94%B0%5E*")
    assert _uids(found.json(), "0020000D") == [STUDY3]


# -- media types ----------------------------------------------------------------------------


def _xml_parts(response: Any) -> list[ET.Element]:
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    assert message.is_multipart()
    parts = []
    for part in message.iter_parts():
        assert part.get_content_type() == "application/dicom+xml"
        parts.append(ET.fromstring(part.get_payload(decode=True)))
    return parts


def _xml_value(root: ET.Element, tag: str) -> str | None:
    for attribute in root.iter(f"{NS}DicomAttribute"):
        if attribute.get("tag") == tag:
            value = attribute.find(f"{NS}Value")
            return None if value is None else value.text
    raise AssertionError(f"{tag} missing")


def test_multipart_xml_answer(sqlite: WebServer) -> None:
    accept = 'multipart/related; type="application/dicom+xml"'
    response = sqlite.client.get("/dicom-web/studies", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    assert 'type="application/dicom+xml"' in response.headers["content-type"]
    parts = _xml_parts(response)
    assert len(parts) == 3
    assert parts[0].tag == f"{NS}NativeDicomModel"
    assert _xml_value(parts[0], "0020000D") == STUDY1
    assert _xml_value(parts[0], "00201208") == "3"
    name = parts[2].find(f".//{NS}DicomAttribute[@tag='00100010']/{NS}PersonName")
    assert name is not None
    family = name.find(f"{NS}Alphabetic/{NS}FamilyName")
    assert family is not None and family.text == "山田"
    keyword = parts[0].find(f".//{NS}DicomAttribute[@tag='00100020']")
    assert keyword is not None and keyword.get("keyword") == "PatientID"
    by_param = sqlite.client.get("/dicom-web/studies", params={"accept": accept})
    assert by_param.headers["content-type"].startswith("multipart/related")


@pytest.mark.parametrize("accept", ["application/json", "*/*", "application/*"])
def test_json_for_json_and_wildcards(sqlite: WebServer, accept: str) -> None:
    response = sqlite.client.get("/dicom-web/studies", headers={"Accept": accept})
    assert response.status_code == 200
    assert "json" in response.headers["content-type"]
    assert len(response.json()) == 3


@pytest.mark.parametrize(
    "accept", ["image/jpeg", 'multipart/related; type="application/dicom"', "text/html"]
)
def test_other_media_types_are_406(sqlite: WebServer, accept: str) -> None:
    response = sqlite.client.get("/dicom-web/studies", headers={"Accept": accept})
    assert response.status_code == 406
    assert response.json()["status"] == 406


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/studies?NoSuchKeyword=1", "NoSuchKeyword"),
        ("/studies?00191099=1", "00191099"),
        ("/studies?includefield=NotAKeyword", "NotAKeyword"),
        ("/studies?limit=-1", "limit"),
        ("/studies?limit=%C2%B2", "limit"),  # "²": str.isdigit() says yes, int() says no
        ("/studies?offset=abc", "offset"),
        ("/studies?limit=1&limit=2", "limit"),
        ("/studies?fuzzymatching=maybe", "fuzzymatching"),
        ("/studies?StudyDate=2020-2019-1", "StudyDate"),
        ("/studies?StudyDate=notadate", "StudyDate"),
        ("/studies?StudyInstanceUID=1.2.*", "StudyInstanceUID"),
        ("/studies?PatientID=a&PatientID=b", "PatientID"),
        ("/studies?SeriesDescription=x", "SeriesDescription"),
        ("/studies/not-a-uid/series", "StudyInstanceUID"),
        (f"/studies/{STUDY1}/series/x.y/instances", "SeriesInstanceUID"),
        (f"/studies/{STUDY1}/series?StudyInstanceUID={STUDY2}", "StudyInstanceUID"),
        ("/studies?PatientName.FamilyName=x", "PatientName"),
    ],
)
def test_bad_input_is_400_naming_the_problem(sqlite: WebServer, path: str, needle: str) -> None:
    response = sqlite.client.get("/dicom-web" + path)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == 400
    assert needle in body["message"]


# -- dicomweb-client -------------------------------------------------------------------------


def test_dicomweb_client_searches(archive: WebServer) -> None:
    client = DICOMwebClient(url=archive.dicomweb)
    studies = client.search_for_studies(search_filters={"PatientID": "P1"})
    assert _uids(studies, "0020000D") == [STUDY1]
    paged = client.search_for_studies(limit=1, offset=1)
    assert _uids(paged, "0020000D") == [STUDY2]
    with_fields = client.search_for_studies(
        fields=["StudyDescription"], search_filters={"StudyDate": "20210101-"}
    )
    assert [_first(s, "00081030") for s in with_fields] == ["Brain MR", "Abdomen"]
    series = client.search_for_series(study_instance_uid=STUDY1)
    assert _uids(series, "0020000E") == [SERIES11, SERIES12]
    all_series = client.search_for_series(search_filters={"Modality": "CT"}, limit=10)
    assert _uids(all_series, "0020000E") == [SERIES11, SERIES31]
    instances = client.search_for_instances(
        study_instance_uid=STUDY1, series_instance_uid=SERIES11, fields=["BitsStored"]
    )
    assert [_first(i, "00280101") for i in instances] == [16, 16]
    of_study = client.search_for_instances(study_instance_uid=STUDY1, offset=2)
    assert _uids(of_study, "00080018") == [f"{SERIES12}.1"]
    everything = client.search_for_instances(search_filters={"PatientID": "P2"})
    assert _uids(everything, "00080018") == [f"{SERIES21}.1"]
    assert client.search_for_studies(search_filters={"PatientID": "none"}) == []


def test_json_text_equals_the_data_set_encoder(sqlite: WebServer) -> None:
    # The JSON answer is written as text on the hot path; the XML answer starts from
    # DICOM JSON dicts: both encoders must agree, on every level.
    from dicomvault.model.attributes import ATTRIBUTES
    from dicomvault.model.query import InformationModel, Level, Query, QueryKey
    from dicomvault.web import match_json

    for level in (Level.STUDY, Level.SERIES, Level.IMAGE):
        ordered = sorted(ATTRIBUTES.values(), key=lambda a: a.tag)
        keys = (
            *(QueryKey(a.tag, a.keyword, a.vr, None) for a in ordered),
            QueryKey(0x00280101, "BitsStored", "US", None),
        )
        query = Query(InformationModel.STUDY_ROOT, level, keys, relational=True)
        body, count, _ = match_json.run_json(sqlite.archive, query, sqlite.dicomweb)
        datasets, _ = match_json.run_datasets(sqlite.archive, query, sqlite.dicomweb)
        assert count == len(datasets) > 0
        assert json.loads(body) == datasets
