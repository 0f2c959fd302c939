"""Retention rules, the storage quota (``reject`` over C-STORE with pynetdicom and over
STOW-RS; ``recycle`` by the runner) and the background runner itself."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from dicomvault.archive import Archive
from dicomvault.archive.deletion import Selection
from dicomvault.archive.retention import retention_runner, run_once
from dicomvault.config import Settings, load_settings
from tests.core.dicomfiles import deliberately_invalid, write_part10
from tests.web.conftest import start_web, web_settings
from tests.workflow.deletion_fixtures import ROOT, blob_files, instance, store, store_many

OLD_CT = ROOT + ".40"
OLD_MR = ROOT + ".41"
OLD_KEPT = ROOT + ".42"
NEW_CT = ROOT + ".43"


def _settings(tmp_path: Path, backend: str = "", **retention: Any) -> Settings:
    return load_settings(
        None,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "index": {"url": backend},
            "retention": retention,
        },
    )


def test_rule_deletes_old_ct_but_not_mr_recent_or_protected(tmp_path: Path, backend: str) -> None:
    rules = [{"modality": "CT", "older_than_days": 3650, "by": "study_date"}]
    with Archive.open(_settings(tmp_path, backend, rules=rules)) as archive:
        store_many(archive, tmp_path, 2, study=OLD_CT, series=OLD_CT + ".1", study_date="19990101")
        store_many(
            archive, tmp_path, 1, study=OLD_MR, series=OLD_MR + ".1", modality="MR",
            study_date="19990101",
        )  # fmt: skip
        store_many(
            archive, tmp_path, 1, study=OLD_KEPT, series=OLD_KEPT + ".1", study_date="19990101"
        )
        store_many(archive, tmp_path, 1, study=NEW_CT, series=NEW_CT + ".1")
        # No usable Study Date: never old by date.
        store_many(archive, tmp_path, 1, study=ROOT + ".44", series=ROOT + ".44.1", study_date="")
        archive.deletion.protect(OLD_KEPT)

        dry = run_once(archive, dry_run=True)
        assert [r.target for r in dry.deleted] == [f"study {OLD_CT}"]
        assert archive.stats().instances == 6

        report = run_once(archive)
        assert [(r.target, r.instances) for r in report.deleted] == [(f"study {OLD_CT}", 2)]
        left = {s for s in (OLD_CT, OLD_MR, OLD_KEPT, NEW_CT, ROOT + ".44")
                if archive.index.row("studies", study_instance_uid=s)}  # fmt: skip
        assert left == {OLD_MR, OLD_KEPT, NEW_CT, ROOT + ".44"}
        assert len(blob_files(archive)) == 4
        assert run_once(archive).deleted == []


def test_rule_by_receive_time(tmp_path: Path) -> None:
    rules = [{"older_than_days": 1, "by": "received"}]
    with Archive.open(_settings(tmp_path, rules=rules)) as archive:
        store_many(archive, tmp_path, 1, study=OLD_CT, series=OLD_CT + ".1", study_date="19990101")
        # Everything was received just now, whatever its Study Date.
        assert run_once(archive).deleted == []
        assert archive.stats().instances == 1


def _same_size(n: int, tmp_path: Path, base: str) -> list[tuple[Dataset, Path]]:
    """``n`` single-instance studies whose files have exactly the same size."""
    out = []
    for i in range(n):
        ds = instance(study=f"{base}.{i}", series=f"{base}.{i}.1")
        ds.SOPInstanceUID = f"{base}.{i}.1.1"
        out.append((ds, write_part10(ds, tmp_path / f"q{i}.dcm")))
    sizes = {path.stat().st_size for _, path in out}
    assert len(sizes) == 1
    return out


def test_quota_reject_over_c_store_and_stow(tmp_path: Path) -> None:
    files = _same_size(4, tmp_path, ROOT + ".50")
    size = files[0][1].stat().st_size
    settings = web_settings(tmp_path, retention={"quota_bytes": 2 * size + size // 2})
    for server in start_web(settings):
        for _, path in files[:2]:
            server.archive.store_file(path)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMVAULT")
        assert assoc.is_established
        try:
            with deliberately_invalid():
                status = assoc.send_c_store(files[2][0])
        finally:
            assoc.release()
        assert status.Status == 0xA700
        assert str(status.ErrorComment).startswith("storage quota of")

        boundary = "quota-boundary"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + files[3][1].read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        response = httpx.post(
            server.dicomweb + "/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )
        assert response.status_code == 507
        failed = response.json()["00081198"]["Value"][0]
        assert failed["00081197"]["Value"] == [0xA700]
        assert server.archive.stats().instances == 2
        # Room again after a deletion: the running total follows at once.
        server.archive.deletion.delete(Selection("study", ROOT + ".50.0"))
        assert server.archive.store_file(files[2][1]).sop_instance_uid == files[2][0].SOPInstanceUID


def test_quota_recycle_deletes_least_recently_received_unprotected(
    tmp_path: Path, backend: str
) -> None:
    files = _same_size(3, tmp_path, ROOT + ".60")
    size = files[0][1].stat().st_size
    settings = _settings(
        tmp_path,
        backend,
        quota_bytes=2 * size + size // 2,
        quota_policy="recycle",
        quota_low_water=0.9,
    )
    with Archive.open(settings) as archive:
        protected, oldest, newest = (str(ds.StudyInstanceUID) for ds, _ in files)
        for _, path in files:  # received in this order; recycle never refuses a store
            archive.store_file(path)
            time.sleep(0.01)
        archive.deletion.protect(protected)
        dry = run_once(archive, dry_run=True)
        assert [r.target for r in dry.deleted] == [f"study {oldest}"]
        assert archive.stats().instances == 3
        report = run_once(archive)
        assert [r.target for r in report.recycled if r.instances] == [f"study {oldest}"]
        assert report.used_bytes == 2 * size
        assert archive.index.row("studies", study_instance_uid=protected) is not None
        assert archive.index.row("studies", study_instance_uid=newest) is not None
        assert archive.stats().instances == 2 and len(blob_files(archive)) == 2


def test_runner_finishes_the_queue_and_stops(tmp_path: Path) -> None:
    with Archive.open(_settings(tmp_path, interval_seconds=0.05)) as archive:
        store_many(archive, tmp_path, 2, study=OLD_CT, series=OLD_CT + ".1")
        kept = store(archive, tmp_path, instance(study=NEW_CT, series=NEW_CT + ".1"))
        now = datetime.now(UTC)
        archive.index.deletions.delete(
            Selection("study", OLD_CT), force=False, reason="manual", now=now, not_before=now
        )
        assert len(blob_files(archive)) == 3

        async def main() -> None:
            stop = asyncio.Event()
            runner = asyncio.ensure_future(retention_runner(archive, stop))
            for _ in range(100):
                if len(blob_files(archive)) == 1:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(runner, timeout=5)

        asyncio.run(main())
        assert blob_files(archive) == {archive.get_instance(kept).blob_name}
        assert archive.deletion.pending()["queue"]["total"] == 0


def test_runner_passes_sum_the_archive_only_for_a_quota(tmp_path: Path, monkeypatch: Any) -> None:
    """The runner's passes (measure=False) skip the sum over every instance unless a
    quota needs it: on an index of millions it took the first seconds of a server just
    started. The CLI's report (measure) and a quota still get it."""
    sums: list[int] = []
    for quota in (0, 10**12):
        sums.clear()
        with Archive.open(_settings(tmp_path / str(quota), quota_bytes=quota)) as archive:
            real = archive.index.deletions.total_bytes

            def counted(real: Any = real) -> int:
                total: int = real()
                sums.append(total)
                return total

            monkeypatch.setattr(archive.index.deletions, "total_bytes", counted)
            monkeypatch.setattr(archive.quota, "_total", counted)
            run_once(archive, measure=False)
            runner_sums = len(sums)
            report = run_once(archive)
        assert runner_sums == (0 if quota == 0 else 1)  # the quota gauge ("reject" policy)
        assert report.used_bytes == 0 and len(sums) > runner_sums
