"""The service layer: ingest, retrieve, delete, verify (DESIGN.md, archive/)."""

from dicomvault.archive.archive import (
    Archive,
    Prepared,
    Reception,
    ready_data_dir,
)
from dicomvault.archive.recovery import VerifyReport

__all__ = ["Archive", "Prepared", "Reception", "VerifyReport", "ready_data_dir"]
