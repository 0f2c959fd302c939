"""The error -> C-STORE status table (PS3.4 B.2.3)."""

from __future__ import annotations

import pytest

from dicomvault.dimse.status import status_for_error, status_for_result
from dicomvault.model import errors
from dicomvault.model.records import StoreResult, StoreStatus


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.UIDMismatch("Affected SOP Instance UID 1.2 but the data set has 1.3"), 0xA900),
        (errors.OutOfResources("disk full"), 0xA700),
        (errors.NotDicom("not DICOM"), 0xC000),
        (errors.CannotParse("truncated"), 0xC000),
        (errors.MissingAttribute("no Study Instance UID"), 0xC000),
        (errors.InvalidUID("SOP Instance UID is not digits"), 0xC000),
        (errors.DuplicateRejected("duplicate with different bytes"), 0xC000),
        (errors.HierarchyConflict("already in another study"), 0xC000),
        (errors.IndexError_("database is locked"), 0xC211),
        (RuntimeError("boom"), 0xC211),
        (OSError(28, "No space left on device"), 0xA700),
    ],
)
def test_error_statuses(error: BaseException, code: int) -> None:
    status = status_for_error(error)
    assert status.status == code
    assert status.error_comment
    assert len(status.error_comment) <= 64
    assert status.category == "failure"


def test_long_comment_is_cut_to_64() -> None:
    status = status_for_error(errors.CannotParse("x" * 200))
    assert status.error_comment is not None and len(status.error_comment) == 64


@pytest.mark.parametrize("outcome", list(StoreStatus))
def test_results_are_success(outcome: StoreStatus) -> None:
    result = StoreResult(
        outcome, "1.2", "1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.1.2", 10, ("w",)
    )
    assert status_for_result(result).status == 0x0000
