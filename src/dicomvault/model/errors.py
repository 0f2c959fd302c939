"""Typed errors raised by ``archive/`` and below.

Each adapter maps them in one table: ``dimse/`` to a DIMSE status + Error Comment
(PS3.7 C.4.2.1.4 / PS3.4 B.2.3), ``web/`` to an HTTP status + JSON body, ``cli/`` to a
message and a non-zero exit. Messages are one line, specific, and name the problem.
"""

from __future__ import annotations


class DicomVaultError(Exception):
    """Base class of every error dicomvault raises on purpose."""


class ConfigError(DicomVaultError):
    """The configuration is invalid; the message names the key."""


class InvalidInstance(DicomVaultError):
    """The bytes are not an instance we can store (the sender's fault)."""


class NotDicom(InvalidInstance):
    """The bytes are not DICOM at all."""


class CannotParse(InvalidInstance):
    """DICOM, but truncated or malformed so the header cannot be read."""


class MissingAttribute(InvalidInstance):
    """A required attribute (SOP Instance UID, Study Instance UID, …) is absent."""


class InvalidUID(InvalidInstance):
    """A UID that breaks PS3.5 9.1 (digits and dots, at most 64 characters)."""


class UIDMismatch(InvalidInstance):
    """The command (or file meta) and the data set name different UIDs."""


class DuplicateRejected(InvalidInstance):
    """Same SOP Instance UID with different bytes and policy ``reject``."""


class HierarchyConflict(InvalidInstance):
    """Same SOP Instance UID already stored under another study or series."""


class OutOfResources(DicomVaultError):
    """Disk full or similar: the archive cannot store now (retry may work)."""


class IndexError_(DicomVaultError):
    """The index database failed (connection lost, constraint, …)."""


class NotFound(DicomVaultError):
    """The requested instance, series, study or patient is not in the archive."""


#: PS3.4 B.2.3 status values an ingest failure maps to (PS3.18 Table I.2-2 reuses them as
#: STOW-RS Failure Reasons).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: Ingest error class → status, first match wins; one table for C-STORE (dimse/status.py,
#: which explains the choices) and STOW-RS (web/stow.py).
INGEST_FAILURE_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UIDMismatch, DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (OutOfResources, OUT_OF_RESOURCES),
    (NotDicom, CANNOT_UNDERSTAND),
    (CannotParse, CANNOT_UNDERSTAND),
    (MissingAttribute, CANNOT_UNDERSTAND),
    (InvalidUID, CANNOT_UNDERSTAND),
    (DuplicateRejected, CANNOT_UNDERSTAND),
    (HierarchyConflict, CANNOT_UNDERSTAND),
    (OSError, OUT_OF_RESOURCES),
)


def ingest_failure_status(exc: BaseException, otherwise: int) -> int:
    """The status of :data:`INGEST_FAILURE_STATUS` for ``exc``, ``otherwise`` when no
    class matches (each front end has its own "processing failure" code)."""
    for cls, status in INGEST_FAILURE_STATUS:
        if isinstance(exc, cls):
            return status
    return otherwise
