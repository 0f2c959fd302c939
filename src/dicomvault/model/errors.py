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


class InstanceRejected(InvalidInstance):
    """The instance was rejected by an IOCM rejection note (a Key Object Selection
    Document with a PS3.16 CID 7011 title); later copies of it are refused."""

    def __init__(self, message: str, kos_sop_instance_uid: str = "") -> None:
        super().__init__(message)
        self.kos_sop_instance_uid = kos_sop_instance_uid


class OutOfResources(DicomVaultError):
    """Disk full or similar: the archive cannot store now (retry may work)."""


class QuotaExceeded(OutOfResources):
    """Storing would take the archive past ``retention.quota_bytes`` (policy ``reject``)."""


class AmbiguousTarget(DicomVaultError):
    """A deletion target that names more than one thing (a Patient ID that several
    issuers use): the message says what to add."""


class Protected(DicomVaultError):
    """The study is protected (``dicomvault protect``): deleting it needs ``force``."""


class IndexError_(DicomVaultError):
    """The index database failed (connection lost, constraint, …)."""


class NotFound(DicomVaultError):
    """The requested instance, series, study or patient is not in the archive."""


#: PS3.4 B.2.3 status values an ingest failure maps to (PS3.18 Table I.2-2 reuses them as
#: STOW-RS Failure Reasons).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: In the A7xx "Refused" range of PS3.4 Table B.2-1 (the instance is refused by the
#: archive's state, not misunderstood), the value dcm4chee-arc, the reference IOCM
#: archive, answers for a "subsequent occurrence of a rejected object".
SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT = 0xA771

#: Ingest error class → status, first match wins; one table for C-STORE (dimse/status.py,
#: which explains the choices) and STOW-RS (web/stow.py).
INGEST_FAILURE_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (InstanceRejected, SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT),
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


class DeidentificationRefused(DicomVaultError):
    """An instance the de-identifier will not process as asked: Burned In Annotation
    (0028,0301) YES without leave to keep burned-in text (PS3.15 E.3.1, Clean Pixel Data,
    is not provided). The message names the instance."""
