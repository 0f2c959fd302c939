"""The service layer: ingest, retrieve, delete, verify (DESIGN.md, archive/)."""

from dicomvault.archive.archive import (
    Archive,
    Prepared,
    Reception,
    make_data_dir,
    require_archive,
)
from dicomvault.archive.recovery import VerifyReport

__all__ = ["Archive", "Prepared", "Reception", "VerifyReport", "make_data_dir", "require_archive"]
