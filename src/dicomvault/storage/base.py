"""The narrow protocol every blob backend implements (as Orthanc's ``IStorageArea``:
create, read, read range, remove — by a name the archive chose)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class Spool(Protocol):
    """A blob being written. Bytes go to a temporary file in the store's own filesystem,
    so committing is a rename, and memory stays flat whatever the size."""

    @property
    def path(self) -> Path:
        """The temporary file, readable while spooling (the header parser reads it)."""
        ...

    @property
    def size(self) -> int: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def mark_dataset_start(self) -> None:
        """Start the data-set digest here: bytes written before are file meta."""
        ...

    def sha256(self) -> str:
        """Hex digest of everything written."""
        ...

    def dataset_sha256(self) -> str:
        """Hex digest of what was written since :meth:`mark_dataset_start`."""
        ...

    def commit(self) -> str:
        """Make the blob durable under a new archive-chosen name and return the name."""
        ...

    def place(self) -> str:
        """Put the blob under a new archive-chosen name, not yet durable: the caller
        makes it so with :meth:`BlobStore.sync`, for many blobs at once, before it
        indexes them."""
        ...

    def discard(self) -> None:
        """Remove the temporary file; safe to call twice or after commit (no-op then)."""
        ...


class BlobStore(Protocol):
    def spool(self, *, hash_inline: bool = True, overlap: bool = True) -> Spool: ...

    def open(self, name: str, *, buffered: bool = True) -> BinaryIO: ...

    def read_range(self, name: str, start: int, length: int) -> bytes: ...

    def size(self, name: str) -> int: ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> None: ...

    def sync(self, names: list[str]) -> None:
        """Make placed blobs durable (their data and directory entries)."""
        ...

    def sync_all(self) -> None:
        """Make every placed blob durable (the blob journal's flush)."""
        ...

    def restore(self, name: str, data: bytes) -> bool:
        """Make blob ``name`` hold exactly ``data``; whether it had to be written."""
        ...

    def names(self) -> Iterator[str]:
        """Every committed blob (for verify and orphan recovery)."""
        ...

    def remove_stale_temp(self, older_than_seconds: float) -> int:
        """Remove spool files left by a crash; returns how many."""
        ...

    def free_bytes(self) -> int: ...
