"""What the C-STORE SCP does with an archive, without the network: prepare each data set
from memory (``Archive.prepare_buffered``), then index several together
(``Archive.finalize_many``)."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom import dcmread

from dicomvault.archive import Archive, Prepared
from dicomvault.model.records import StoreResult
from tests.core.dicomfiles import dataset_bytes


def prepare(archive: Archive, path: Path) -> Prepared | StoreResult:
    """The Part 10 file at ``path`` as a C-STORE brings it: its data set in memory."""
    ds = dcmread(path, stop_before_pixels=True)
    return archive.prepare_buffered(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        dataset=dataset_bytes(path),
        source_ae="SCU",
    )


def finalize_together(
    archive: Archive, prepared: list[Prepared]
) -> list[StoreResult | BaseException]:
    """Index ``prepared`` in one batch; each one's result or error, in order."""
    got: list[list[StoreResult | BaseException]] = []
    done = threading.Event()

    def written(results: list[StoreResult | BaseException]) -> None:
        got.append(results)
        done.set()

    archive.finalize_many(prepared, written)
    assert done.wait(30)
    return got[0]
