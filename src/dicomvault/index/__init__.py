"""The index: SQL schema and queries (SQLAlchemy Core). Never imports pydicom."""

from dicomvault.index.db import Index, IndexOutdated, PendingInsert

__all__ = ["Index", "IndexOutdated", "PendingInsert"]
