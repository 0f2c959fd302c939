"""The index: SQL schema and queries (SQLAlchemy Core). Never imports pydicom."""

from dicomvault.index.db import Index, IndexOutdated
from dicomvault.index.ingest import InsertOutcome, PendingInsert

__all__ = ["Index", "IndexOutdated", "InsertOutcome", "PendingInsert"]
