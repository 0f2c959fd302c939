"""IHE IOCM rejection notes through the real server: a Key Object Selection Document with
a PS3.16 CID 7011 title sent with DCMTK ``storescu`` hides the instances it lists from
C-FIND (pynetdicom), QIDO-RS and WADO-RS at once; later copies are refused over C-STORE
(0xA771 + Error Comment) and STOW-RS (409, Failure Reason 0xA771)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    KeyObjectSelectionDocumentStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicomvault.archive.retention import run_once
from tests.core.dicomfiles import deliberately_invalid, write_part10
from tests.web.conftest import WebServer, start_web, web_settings
from tests.workflow.deletion_fixtures import (
    ROOT,
    blob_files,
    instance,
    rejection_note,
    store,
)

STUDY = ROOT + ".10"
SERIES = STUDY + ".1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path))


def _storescu(server: WebServer, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/usr/bin/storescu", "-aec", "DICOMVAULT", "127.0.0.1", str(server.dimse_port), str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _c_find_instances(server: WebServer, study: str) -> list[str]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMVAULT")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    found = []
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.append(str(identifier.SOPInstanceUID))
    finally:
        assoc.release()
    return sorted(found)


def _c_store(server: WebServer, ds: Dataset) -> Dataset:
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(KeyObjectSelectionDocumentStorage)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        with deliberately_invalid():
            status: Dataset = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return status


def _stow(client: httpx.Client, path: Path) -> httpx.Response:
    boundary = "deletion-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return client.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )


def test_rejection_note_hides_instances_and_refuses_copies(
    server: WebServer, tmp_path: Path
) -> None:
    archive = server.archive
    datasets = [instance(study=STUDY, series=SERIES) for _ in range(3)]
    uids = [store(archive, tmp_path, ds) for ds in datasets]
    rejected, kept = uids[:2], uids[2]
    assert _c_find_instances(server, STUDY) == sorted(uids)

    note = rejection_note([(STUDY, SERIES, uid) for uid in rejected])
    kos_path = write_part10(note, tmp_path / "kos.dcm")
    done = _storescu(server, kos_path)
    assert done.returncode == 0, done.stderr

    # Gone at once from C-FIND, QIDO-RS, WADO-RS (instance and metadata).
    assert _c_find_instances(server, STUDY) == sorted([kept, str(note.SOPInstanceUID)])
    qido = server.client.get(f"/dicom-web/studies/{STUDY}/instances")
    assert qido.status_code == 200
    listed = {item["00080018"]["Value"][0] for item in qido.json()}
    assert listed == {kept, str(note.SOPInstanceUID)}
    study = server.client.get("/dicom-web/studies", params={"StudyInstanceUID": STUDY}).json()
    # Number of Study Related Instances (0020,1208): the kept CT and the KOS.
    assert study[0]["00201208"]["Value"] == [2]
    for uid in rejected:
        base = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{uid}"
        assert server.client.get(base).status_code == 404
        assert server.client.get(base + "/metadata").status_code == 404
    # With the default grace of 0 the files are gone too.
    assert len(blob_files(archive)) == 2

    # A later copy is refused: C-STORE (pynetdicom) and STOW-RS.
    status = _c_store(server, datasets[0])
    assert status.Status == 0xA771
    # Error Comment is LO (64 characters): the note's UID as far as it fits; the whole
    # of it is in the log and in GET /api/deletions.
    comment = str(status.ErrorComment)
    assert comment.startswith(f"rejected by KOS {note.SOPInstanceUID}"[:40])
    assert len(comment) <= 64
    response = _stow(server.client, tmp_path / f"{rejected[1]}.dcm")
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA771]
    assert failed["00081155"]["Value"] == [rejected[1]]
    assert failed["00000902"]["Value"][0].startswith("rejected by KOS")

    # The note itself is stored; re-sending it changes nothing.
    assert _storescu(server, kos_path).returncode == 0
    assert archive.stats().instances == 2
    listing = server.client.get("/api/deletions").json()
    assert {r["sop_instance_uid"] for r in listing["rejected"]["items"]} == set(rejected)
    assert {r["reason_code"] for r in listing["rejected"]["items"]} == {"113001"}
    assert listing["queue"]["total"] == 0


def test_note_before_the_instance_refuses_it(server: WebServer, tmp_path: Path) -> None:
    ds = instance(study=STUDY, series=SERIES)
    note = rejection_note(
        [(STUDY, SERIES, str(ds.SOPInstanceUID))],
        code="113037",
        meaning="Rejected for Patient Safety Reasons",
    )
    status = _c_store(server, note)
    assert status.Status == 0x0000
    status = _c_store(server, ds)
    assert status.Status == 0xA771
    assert server.archive.stats().instances == 1


def test_not_a_rejection_title_rejects_nothing(server: WebServer, tmp_path: Path) -> None:
    uid = store(server.archive, tmp_path, instance(study=STUDY, series=SERIES))
    # (113000, DCM, "Of Interest"): an ordinary key object selection.
    note = rejection_note([(STUDY, SERIES, uid)], code="113000", meaning="Of Interest")
    assert _c_store(server, note).Status == 0x0000
    assert server.archive.stats().instances == 2


def test_grace_period_keeps_the_files_until_it_passes(tmp_path: Path) -> None:
    # 0.00002 days: 1.7 s.
    settings = web_settings(tmp_path, retention={"rejection_grace_days": 0.00002})
    for server in start_web(settings):
        archive = server.archive
        uid = store(archive, tmp_path, instance(study=STUDY, series=SERIES))
        note = rejection_note(
            [(STUDY, SERIES, uid)], code="113039", meaning="Data Retention Policy Expired"
        )
        assert _c_store(server, note).Status == 0x0000
        assert server.client.get(f"/dicom-web/studies/{STUDY}/instances").json()[0]["00080018"][
            "Value"
        ] == [str(note.SOPInstanceUID)]
        assert len(blob_files(archive)) == 2  # the rejected file waits
        queue = server.client.get("/api/deletions").json()["queue"]
        assert queue["total"] == 1 and queue["items"][0]["reason"] == "rejected"
        assert run_once(archive).queue_finished == 0
        deadline = time.monotonic() + 10
        finished = 0
        while not finished and time.monotonic() < deadline:
            time.sleep(0.3)
            finished = run_once(archive).queue_finished
        assert finished == 1
        assert len(blob_files(archive)) == 1
