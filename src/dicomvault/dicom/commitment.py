"""Storage Commitment Push Model data sets (PS3.4 J.3.2, J.3.3): the Action Information
of N-ACTION (Request Storage Commitment) and the Event Information of N-EVENT-REPORT
(Storage Commitment Result), with pydicom."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomvault.dicom.dataset_codec import decode_data_set, encode_data_set
from dicomvault.model.errors import CannotParse, DicomVaultError
from dicomvault.model.uid import uid_problem

#: Action Type ID "Request Storage Commitment" (PS3.4 Table J.3-1).
REQUEST_COMMITMENT = 1
#: Event Type IDs (PS3.4 Table J.3-2): all committed / with failures.
COMMITTED = 1
COMMITTED_WITH_FAILURES = 2

#: Failure Reason (0008,1197) values a commitment report uses (PS3.4 J.3.3.1.1.1).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


class InvalidCommitmentRequest(DicomVaultError):
    """The Action Information of a Request Storage Commitment is not usable; ``status``
    is the N-ACTION status to answer (PS3.7 10.1.4.1.10)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Reference:
    """One Referenced SOP Sequence item: (0008,1150) and (0008,1155)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """What an N-ACTION Request Storage Commitment asks (PS3.4 Table J.3-1)."""

    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """An N-EVENT-REPORT Storage Commitment Result (PS3.4 Table J.3-2)."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    #: (reference, Failure Reason)
    failed: tuple[tuple[Reference, int], ...]
    retrieve_ae_title: str | None = None

    @property
    def event_type_id(self) -> int:
        return COMMITTED_WITH_FAILURES if self.failed else COMMITTED


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value is not None else ""


def _references(ds: Dataset, keyword: str) -> list[Dataset]:
    seq = ds.get(keyword)
    return list(seq) if seq is not None else []


def parse_commitment_request(data: bytes | None, transfer_syntax_uid: str) -> CommitmentRequest:
    """The Transaction UID and references of a Request Storage Commitment.

    Raises
    ------
    InvalidCommitmentRequest
        With 0x0115 (Invalid argument value) for a Transaction UID that is not a UID or a
        reference whose UIDs are not UIDs, 0x0114 (No such argument) for a missing
        Transaction UID or an empty/absent Referenced SOP Sequence, 0x0110 when the data
        set does not parse (PS3.7 C.4).
    """
    if data is None:
        raise InvalidCommitmentRequest("N-ACTION without Action Information", 0x0114)
    try:
        ds = decode_data_set(data, transfer_syntax_uid)
    except CannotParse as exc:
        raise InvalidCommitmentRequest(str(exc), PROCESSING_FAILURE) from exc
    transaction = _text(ds, "TransactionUID")
    if not transaction:
        raise InvalidCommitmentRequest("no Transaction UID (0008,1195)", 0x0114)
    problem = uid_problem(transaction)
    if problem:
        raise InvalidCommitmentRequest(f"Transaction UID {transaction!r} {problem}", 0x0115)
    items = _references(ds, "ReferencedSOPSequence")
    if not items:
        raise InvalidCommitmentRequest("empty Referenced SOP Sequence (0008,1199)", 0x0114)
    refs: list[Reference] = []
    for number, item in enumerate(items, 1):
        sop_class = _text(item, "ReferencedSOPClassUID")
        sop_instance = _text(item, "ReferencedSOPInstanceUID")
        for name, value in (("Class", sop_class), ("Instance", sop_instance)):
            problem = uid_problem(value)
            if problem:
                raise InvalidCommitmentRequest(
                    f"Referenced SOP {name} UID of item {number} {problem}", 0x0115
                )
        refs.append(Reference(sop_class, sop_instance))
    return CommitmentRequest(transaction, tuple(refs))


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def encode_commitment_request(request: CommitmentRequest, transfer_syntax_uid: str) -> bytes:
    """The Action Information of N-ACTION Request Storage Commitment (PS3.4 J.3.2.1.1)."""
    ds = Dataset()
    ds.TransactionUID = request.transaction_uid
    ds.ReferencedSOPSequence = Sequence([_item(ref) for ref in request.references])
    return encode_data_set(ds, transfer_syntax_uid)


def encode_commitment_result(result: CommitmentResult, transfer_syntax_uid: str) -> bytes:
    """The Event Information of N-EVENT-REPORT (PS3.4 J.3.3.1.1): Transaction UID,
    Referenced SOP Sequence of what is committed (with Retrieve AE Title), Failed SOP
    Sequence with a Failure Reason per item (event type 2 only)."""
    ds = Dataset()
    ds.TransactionUID = result.transaction_uid
    if result.retrieve_ae_title:
        ds.RetrieveAETitle = result.retrieve_ae_title
    if result.committed:
        ds.ReferencedSOPSequence = Sequence([_item(ref) for ref in result.committed])
    if result.failed:
        failed = []
        for ref, reason in result.failed:
            item = _item(ref)
            item.FailureReason = reason
            failed.append(item)
        ds.FailedSOPSequence = Sequence(failed)
    return encode_data_set(ds, transfer_syntax_uid)


def parse_commitment_result(data: bytes | None, transfer_syntax_uid: str) -> CommitmentResult:
    """A received Storage Commitment Result (the SCU side, PS3.4 J.3.3.1.1).

    Raises
    ------
    CannotParse
        No data set, no Transaction UID, or malformed.
    """
    if data is None:
        raise CannotParse("N-EVENT-REPORT without Event Information")
    ds = decode_data_set(data, transfer_syntax_uid)
    transaction = _text(ds, "TransactionUID")
    if not transaction:
        raise CannotParse("Storage Commitment Result without Transaction UID (0008,1195)")

    def ref(item: Dataset) -> Reference:
        return Reference(
            _text(item, "ReferencedSOPClassUID"), _text(item, "ReferencedSOPInstanceUID")
        )

    committed = tuple(ref(i) for i in _references(ds, "ReferencedSOPSequence"))
    failed = tuple(
        (ref(i), int(i.get("FailureReason", PROCESSING_FAILURE)))
        for i in _references(ds, "FailedSOPSequence")
    )
    return CommitmentResult(transaction, committed, failed, _text(ds, "RetrieveAETitle") or None)
