"""Ingest of Part 10 files arriving as a stream of chunks: the parts of a STOW-RS request
(PS3.18 10.5), one :class:`StreamedInstance` per part.

The life of an instance (DESIGN.md) unchanged: a part of up to :data:`IN_MEMORY` bytes
is held in memory, its header read from there and the file written once; a larger one is
spooled into the blob store's own filesystem as it arrives (memory stays bounded) and its
header read from the spool. Then the checks of :meth:`Archive._check` run, the blob is
made durable and indexed through the group-commit writer. :meth:`StreamedInstance.finish`
returns as soon as the blob is durable, with a future that completes when the index has
committed: the caller can spool the next part meanwhile, and many parts of one request
share an index commit. Success is only ever reported after that future completes.

The file is stored as sent, but for its preamble, stored as zeros (CVE-2019-11687): a
Part 10 file keeps its File Meta Information byte for byte (PS3.10 7.1); a file without
preamble gets 128 zero bytes in front; a bare
data set gets a File Meta Information built from its UIDs. These are the rules of
:meth:`Archive.store_file` for files from disk.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from dicomvault.archive.archive import Archive
from dicomvault.dicom.fromjson import BulkData, uids_of, write_part10
from dicomvault.dicom.parse import ParsedInstance, parse_instance_bytes
from dicomvault.dicom.part10 import (
    HEAD_SIZE,
    PREAMBLE,
    encode_file_meta,
    read_preamble_layout,
)
from dicomvault.model.errors import InvalidInstance
from dicomvault.model.records import StoreResult
from dicomvault.storage.filesystem import FileSpool

_COPY_CHUNK = 1 << 20
#: A part up to this size is held in memory, parsed from there and written once, like a
#: C-STORE data set (``Archive.prepare_buffered``): no spool written in pieces and read
#: back for the header. A larger one streams to the spool from this size on.
IN_MEMORY = 1 << 20


class StudyMismatch(InvalidInstance):
    """The instance belongs to another study than the one the request is for
    (PS3.18 10.5.1: ``POST /studies/{study}`` stores only instances of that study)."""


class StreamedInstance:
    """One Part 10 file arriving in chunks.

    Call :meth:`write` with the chunks in order (blocking file I/O: run it off the event
    loop), then :meth:`finish` once, or :meth:`abort`. Errors that the first bytes
    already show (not DICOM, a truncated meta) are kept and raised by :meth:`finish`, so
    the caller keeps reading the body and reports the part as failed.

    Parameters
    ----------
    archive : Archive
    study_instance_uid : str, optional
        When given, the instance must belong to this study (else :class:`StudyMismatch`).
    source_ae : str, optional
        Recorded as the instance's source.
    """

    def __init__(
        self,
        archive: Archive,
        *,
        study_instance_uid: str | None = None,
        source_ae: str | None = None,
    ) -> None:
        self._archive = archive
        self._study = study_instance_uid
        self._source_ae = source_ae
        self._head = bytearray()
        self._layout: str | None = None
        self._bare_offset = 0
        self._spool: FileSpool | None = None
        self._error: Exception | None = None
        self._done = False
        #: Bytes received for this instance (as sent, before any header is added).
        self.received = 0
        #: The UIDs the header gives, once :meth:`finish` has read it (for reporting a
        #: failure such as :class:`StudyMismatch`).
        self.sop_class_uid: str | None = None
        self.sop_instance_uid: str | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; the first :data:`HEAD_SIZE` bytes are held until the layout
        (PS3.10 7.1 header or not) is known."""
        if self._done:
            raise ValueError("instance already finished")
        self.received += len(data)
        if self._error is not None:
            return  # already failed: the rest of the part is read and dropped
        try:
            if self._spool is None:
                self._head += data
                if len(self._head) > IN_MEMORY:
                    self._start()
            else:
                self._spool.write(data)
        except Exception as exc:
            self._fail(exc)

    def write_all(self, chunks: list[bytes | memoryview]) -> None:
        """:meth:`write` each of ``chunks``, in order."""
        for chunk in chunks:
            self.write(chunk)

    def _start(self) -> None:
        buffer, self._head = self._head, bytearray()
        head = memoryview(buffer)  # written as slices: no copy of up to IN_MEMORY bytes
        layout, offset = read_preamble_layout(bytes(head[:HEAD_SIZE]))
        spool = self._spool = self._archive.store.spool()
        self._layout = layout
        if layout == "part10":
            # The preamble is written as zeros (PS3.10 7.1 lets it hold anything; a PE
            # header there makes a DICOM/executable polyglot, CVE-2019-11687).
            spool.write(bytes(PREAMBLE))
            spool.write(head[PREAMBLE:offset])
        elif layout == "no-preamble":
            spool.write(bytes(128))
            spool.write(head[:offset])
        else:
            # A bare data set, maybe after group 0002 elements without preamble and
            # prefix: kept whole for the parser (which reads their Transfer Syntax UID);
            # finish() writes a File Meta Information and the data set after them.
            self._bare_offset = offset
            offset = 0
        spool.mark_dataset_start()
        spool.write(head[offset:])

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self._head = bytearray()
        if self._spool is not None:
            self._spool.discard()
            self._spool = None

    def finish(self) -> Future[StoreResult]:
        """Parse, check, make durable (fsync) and submit for indexing.

        Returns
        -------
        Future[StoreResult]
            Completes when the instance is indexed (or raises the indexing error);
            already complete for a duplicate that needs no writing.

        Raises
        ------
        InvalidInstance
            The typed errors of :func:`dicomvault.dicom.parse.parse_instance`,
            :class:`StudyMismatch`, and the duplicate checks of :meth:`Archive._check`.
        OutOfResources
            The disk is full.
        """
        if self._done:
            raise ValueError("instance already finished")
        self._done = True
        try:
            if self._error is None and self._spool is None:
                buffered = self._buffered()
                if buffered is not None:
                    return buffered
                self._start()  # a bare data set: its File Meta is built from the spool
        except Exception as exc:
            self._fail(exc)
        if self._error is not None:
            raise self._error
        spool = self._spool
        assert spool is not None
        self._spool = None
        archive = self._archive
        try:
            spool.flush()
            parsed = archive._parse(spool.path)
            if self._layout == "no-meta":
                spool = self._with_meta(spool, parsed)
            self._check_parsed(parsed)
        except BaseException:
            spool.discard()
            raise
        return archive._complete_async(spool, parsed, self._source_ae)

    def _buffered(self) -> Future[StoreResult] | None:
        """:meth:`finish` for a Part 10 file held whole in memory: parsed from the buffer
        as it will be stored, then written by :meth:`_start`. ``None`` for a bare data set
        (the spool path builds its File Meta Information)."""
        head = self._head
        layout, _ = read_preamble_layout(bytes(head[:HEAD_SIZE]))
        if layout == "no-meta":
            return None
        if layout == "part10":
            head[:PREAMBLE] = bytes(PREAMBLE)  # zeros (CVE-2019-11687), as stored
        else:  # no preamble: stored with 128 zero bytes in front
            head[:0] = bytes(PREAMBLE)
        archive = self._archive
        parsed = parse_instance_bytes(
            head,
            name="the part",
            bulk_data_threshold=archive.settings.index.bulk_data_threshold,
            meta_mismatch="warn",
        )
        self._check_parsed(parsed)
        self._start()
        spool, self._spool = self._spool, None
        assert spool is not None
        return archive._complete_async(spool, parsed, self._source_ae)

    def _check_parsed(self, parsed: ParsedInstance) -> None:
        """Note the UIDs; refuse an instance of another study than the request's."""
        self.sop_class_uid = parsed.record.instance.sop_class_uid
        self.sop_instance_uid = parsed.record.instance.sop_instance_uid
        study = parsed.record.study.study_instance_uid
        if self._study is not None and study != self._study:
            raise StudyMismatch(
                f"Study Instance UID {study} differs from the study of the request, "
                f"{self._study}"
            )

    def _with_meta(self, spool: FileSpool, parsed: ParsedInstance) -> FileSpool:
        """A new spool holding a File Meta Information (PS3.10 7.1) and then the bare
        data set of ``spool``, which is discarded."""
        inst = parsed.record.instance
        fresh = self._archive.store.spool()
        try:
            fresh.write(
                encode_file_meta(
                    inst.sop_class_uid,
                    inst.sop_instance_uid,
                    parsed.transfer_syntax_uid,
                    source_ae=self._source_ae,
                )
            )
            fresh.mark_dataset_start()
            with open(Path(spool.path), "rb") as src:
                src.seek(self._bare_offset)
                while chunk := src.read(_COPY_CHUNK):
                    fresh.write(chunk)
        except BaseException:
            fresh.discard()
            raise
        spool.discard()
        return fresh

    def abort(self) -> None:
        """Drop what was received (the request failed or ended early)."""
        self._done = True
        self._head = bytearray()
        if self._spool is not None:
            self._spool.discard()
            self._spool = None


def store_json_instance(
    archive: Archive,
    dataset_json: dict[str, Any],
    bulk: dict[str, BulkData],
    *,
    study_instance_uid: str | None = None,
    source_ae: str | None = None,
) -> Future[StoreResult]:
    """Ingest one data set of the DICOM JSON + bulk data form of STOW-RS (PS3.18
    10.5.1.2.2): written as a Part 10 file (:func:`dicomvault.dicom.fromjson.write_part10`)
    into a temporary file of the blob store, then stored as a streamed instance.

    Returns
    -------
    Future[StoreResult]
        As :meth:`StreamedInstance.finish`.

    Raises
    ------
    InvalidInstance
        The data set cannot be converted, or the errors of :meth:`StreamedInstance.finish`.
    """
    instance = StreamedInstance(archive, study_instance_uid=study_instance_uid, source_ae=source_ae)
    try:
        with tempfile.TemporaryFile(dir=archive.store.root / ".tmp", suffix=".json.dcm") as tmp:
            write_part10(dataset_json, bulk, tmp)
            tmp.seek(0)
            while chunk := tmp.read(_COPY_CHUNK):
                instance.write(chunk)
    except BaseException:
        instance.abort()
        raise
    return instance.finish()


class BulkFile:
    """A bulk data part of the DICOM JSON form kept in a temporary file of the blob
    store's spool directory until the data sets that refer to it are written; calling
    it reads the bytes back (pydicom's bulk data handlers need them in memory)."""

    def __init__(self, archive: Archive) -> None:
        self._file = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
            dir=archive.store.root / ".tmp", suffix=".bulk"
        )

    def write(self, data: bytes | bytearray) -> None:
        self._file.write(data)

    def __call__(self) -> bytes:
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._file.close()


def json_uids(dataset_json: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(SOP Class UID, SOP Instance UID)`` of a DICOM JSON data set, when present."""
    return uids_of(dataset_json)
