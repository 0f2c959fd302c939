"""DELETE of studies, series and instances through the real server (dicomweb-client, httpx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_client import DICOMwebClient

from dicomvault.model.errors import NotFound
from tests.core.dicomfiles import make_dataset, write_part10
from tests.web.conftest import WebServer, start_web, web_settings

STUDY = "1.2.826.0.1.3680043.8.498.7"
OTHER = "1.2.826.0.1.3680043.8.498.8"


def _store(web: WebServer, tmp_path: Path, study: str, series: str, count: int) -> list[str]:
    uids = []
    for _ in range(count):
        ds = make_dataset(study=study, series=series)
        web.archive.store_file(write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
        uids.append(str(ds.SOPInstanceUID))
    return uids


def test_delete_at_each_level_keeps_the_archive_consistent(web: WebServer, tmp_path: Path) -> None:
    a = _store(web, tmp_path, STUDY, STUDY + ".1", 3)
    b = _store(web, tmp_path, STUDY, STUDY + ".2", 2)
    c = _store(web, tmp_path, OTHER, OTHER + ".1", 2)
    client = DICOMwebClient(url=web.dicomweb)

    client.delete_instance(STUDY, STUDY + ".1", a[0])
    with pytest.raises(NotFound):
        web.archive.get_instance(a[0])
    assert web.archive.get_instance(a[1]).series_instance_uid == STUDY + ".1"

    client.delete_series(STUDY, STUDY + ".2")
    for uid in b:
        with pytest.raises(NotFound):
            web.archive.get_instance(uid)

    client.delete_study(STUDY)
    assert web.archive.stats().instances == len(c)
    assert web.archive.stats().studies == 1
    report = web.archive.verify()
    assert report.consistent and report.checked == len(c) and not report.orphans


def test_hierarchy_and_unknown_uids_are_404(web_sqlite: WebServer, tmp_path: Path) -> None:
    web = web_sqlite
    a = _store(web, tmp_path, STUDY, STUDY + ".1", 1)
    _store(web, tmp_path, OTHER, OTHER + ".1", 1)
    for path in (
        f"/dicom-web/studies/{OTHER}/series/{STUDY}.1",  # a series of another study
        f"/dicom-web/studies/{OTHER}/series/{OTHER}.1/instances/{a[0]}",
        f"/dicom-web/studies/{STUDY}/series/{STUDY}.9/instances/{a[0]}",
        "/dicom-web/studies/1.2.3.4",
        "/dicom-web/studies/1.2.3.4/series/1.2.3.4.5",
        f"/dicom-web/studies/{STUDY}/series/{STUDY}.1/instances/1.2.3",
    ):
        response = web.client.delete(path)
        assert response.status_code == 404, path
        assert response.json()["status"] == 404
    response = web.client.delete("/dicom-web/studies/not-a-uid")
    assert response.status_code == 400 and "Study Instance UID" in response.json()["message"]
    assert web.archive.stats().instances == 2


@pytest.fixture
def no_delete(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path, http={"allow_delete": False}))


def test_delete_disabled_is_405_with_allow(no_delete: WebServer, tmp_path: Path) -> None:
    a = _store(no_delete, tmp_path, STUDY, STUDY + ".1", 1)
    for path in (
        f"/dicom-web/studies/{STUDY}",
        f"/dicom-web/studies/{STUDY}/series/{STUDY}.1",
        f"/dicom-web/studies/{STUDY}/series/{STUDY}.1/instances/{a[0]}",
    ):
        response = no_delete.client.delete(path)
        assert response.status_code == 405
        assert "allow_delete" in response.json()["message"]
        assert "GET" in response.headers["allow"] and "DELETE" not in response.headers["allow"]
    with pytest.raises(requests.HTTPError):
        DICOMwebClient(url=no_delete.dicomweb).delete_study(STUDY)
    assert no_delete.archive.stats().instances == 1
