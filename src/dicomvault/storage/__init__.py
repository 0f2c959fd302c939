"""Blob storage: the archive's bytes, by names the archive chooses. Never imports pydicom."""

from dicomvault.storage.base import BlobStore, Spool
from dicomvault.storage.filesystem import FileSystemBlobStore

__all__ = ["BlobStore", "FileSystemBlobStore", "Spool"]
