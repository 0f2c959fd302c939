"""A Storage SCP handler writing each received instance to a folder as a Part 10 file
(PS3.10 7.1): for ``dicomvault get --out DIR``.

File names are a counter (``000001.dcm`` …), never a value from the data set.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import BinaryIO

from dicomvault.dicom.part10 import encode_file_meta
from dicomvault.dimse.status import status_for_error
from dicomvault.net.handlers import SUCCESS, DimseStatus, StoreRequest


class FolderSink:
    """One instance streaming into ``<folder>/<n>.dcm.part``, renamed when complete."""

    def __init__(self, path: Path, request: StoreRequest) -> None:
        self.path = path
        self.partial = path.with_suffix(".part")
        self.fh: BinaryIO = self.partial.open("wb")
        self.fh.write(
            encode_file_meta(
                request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax_uid
            )
        )
        self.error: OSError | None = None

    def write(self, chunk: memoryview) -> None:
        if self.error is None:
            try:
                self.fh.write(chunk)
            except OSError as exc:
                self.error = exc

    def finish(self) -> DimseStatus:
        self.fh.close()
        if self.error is not None:
            self.partial.unlink(missing_ok=True)
            return status_for_error(self.error)
        self.partial.replace(self.path)
        return SUCCESS

    def abort(self) -> None:
        self.fh.close()
        self.partial.unlink(missing_ok=True)


class FolderStoreHandler:
    """Writes every C-STORE to ``folder`` (PS3.4 B.2.2)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._counter = itertools.count(1)
        self.written: list[Path] = []

    def begin_store(self, request: StoreRequest) -> FolderSink:
        path = self.folder / f"{next(self._counter):06d}.dcm"
        self.written.append(path)
        return FolderSink(path, request)
