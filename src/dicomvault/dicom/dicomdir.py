"""DICOMDIR: the media index of a File-set (PS3.10 8, PS3.3 F.3).

Importing a CD or USB stick means reading its DICOMDIR and storing the files it lists.
Referenced File IDs (0004,1500) are path components relative to the DICOMDIR's folder
(PS3.10 8.5; PS3.12 restricts them to upper-case letters, digits and ``_``, so media
written on one system and mounted on another may differ in case). No component may
leave the folder: a File ID with ``..``, a separator, or a symlink that escapes is
skipped, since a DICOMDIR is as untrusted as any other input.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from dicomvault.dicom.charset import DEFAULT_CHARSET
from dicomvault.dicom.part10 import (
    HEAD_SIZE,
    MEDIA_STORAGE_DIRECTORY,
    read_file_meta,
    transfer_syntax_encoding,
)
from dicomvault.dicom.reader import DataSet, Reader
from dicomvault.dicom.values import strings
from dicomvault.model.errors import CannotParse, InvalidInstance

DIRECTORY_RECORD_SEQUENCE = 0x00041220
REFERENCED_FILE_ID = 0x00041500


def is_dicomdir(path: Path) -> bool:
    """Whether ``path`` is a DICOMDIR, from its File Meta Information only.

    PS3.10 8.6: the Media Storage SOP Class UID of a DICOMDIR is
    1.2.840.10008.1.3.10 (Media Storage Directory Storage).
    """
    try:
        with open(path, "rb") as fp:
            head = fp.read(HEAD_SIZE)
        meta = read_file_meta(head)
    except (OSError, InvalidInstance):
        return False
    return meta.media_storage_sop_class_uid == MEDIA_STORAGE_DIRECTORY


def _read_records(path: Path) -> list[DataSet]:
    with open(path, "rb", buffering=0) as fp:
        size = os.fstat(fp.fileno()).st_size
        head = fp.read(HEAD_SIZE)
        meta = read_file_meta(head)
        ts = meta.transfer_syntax_uid or "1.2.840.10008.1.2.1"
        implicit, little, deflated = transfer_syntax_encoding(ts)
        offset = meta.dataset_offset
        reader = Reader(
            fp,
            offset,
            size,
            initial=b"" if deflated else head[offset:],
            deflated=deflated,
            bulk_threshold=1 << 20,
        )
        try:
            ds, _ = reader.read_dataset(offset, None, implicit, little)
            reader.check_complete()
        except (RecursionError, zlib.error) as exc:
            raise CannotParse(f"malformed DICOMDIR: {exc}") from None
    records = ds.get(DIRECTORY_RECORD_SEQUENCE)
    return records.value if records is not None and isinstance(records.value, list) else []


def _safe_components(components: list[str]) -> list[str] | None:
    """The File ID's components, or ``None`` when one could name something outside."""
    if not components:
        return None
    for part in components:
        if (
            not part
            or part in (".", "..")
            or "/" in part
            or "\\" in part
            or ":" in part
            or "\0" in part
        ):
            return None
    return components


class _CaseInsensitiveTree:
    """Find files by components whose case may differ from the names on disk."""

    def __init__(self, root: Path) -> None:
        self._listings: dict[Path, dict[str, str]] = {}
        self.root = root

    def _child(self, folder: Path, name: str) -> Path | None:
        exact = folder / name
        if exact.exists():
            return exact
        listing = self._listings.get(folder)
        if listing is None:
            try:
                listing = {entry.upper(): entry for entry in os.listdir(folder)}
            except OSError:
                listing = {}
            self._listings[folder] = listing
        found = listing.get(name.upper())
        return folder / found if found is not None else None

    def find(self, components: list[str]) -> Path | None:
        current: Path | None = self.root
        for part in components:
            if current is None:
                return None
            current = self._child(current, part)
        return current


def dicomdir_references(path: Path) -> list[Path]:
    """Return the existing files a DICOMDIR references (PS3.10 8.5, PS3.3 F.3.2.2).

    Parameters
    ----------
    path : Path
        A DICOMDIR file.

    Returns
    -------
    list of Path
        Each (0004,1500) Referenced File ID of the Directory Record Sequence resolved
        relative to the DICOMDIR's folder, matched case-insensitively, in record order,
        without duplicates. References that are missing on disk, or that would escape the
        folder (``..``, separators, symlinks pointing outside), are left out. An empty list
        when ``path`` is not a DICOMDIR.

    Raises
    ------
    CannotParse
        The DICOMDIR is truncated or malformed.
    OSError
        It cannot be read.
    """
    if not is_dicomdir(path):
        return []
    root = path.parent
    real_root = root.resolve()
    tree = _CaseInsensitiveTree(root)
    found: dict[Path, None] = {}
    for record in _read_records(path):
        element = record.get(REFERENCED_FILE_ID)
        if element is None or not isinstance(element.value, bytes):
            continue
        components = _safe_components(strings(element.value, "CS", DEFAULT_CHARSET, []))
        if components is None:
            continue
        target = tree.find(components)
        if target is None or not target.is_file():
            continue
        if not target.resolve().is_relative_to(real_root):
            continue
        found[target] = None
    return list(found)
