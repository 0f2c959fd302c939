"""The one table from archive outcomes to DIMSE statuses: C-STORE (PS3.4 B.2.3) and
Query/Retrieve (PS3.4 C.4, the table near the end of this module), PS3.7 C.

Choices, per PS3.4 Table B.2-1 (the only statuses a Storage SCP may return):

===========================  ===========  =============================================
outcome                      status       why
===========================  ===========  =============================================
StoreStatus.STORED           0x0000       Success.
StoreStatus.DUPLICATE        0x0000       Same UID, identical data set: the instance is
                                          stored, so the sender has succeeded; Annex B
                                          defines no "duplicate" warning (0xB000 means
                                          coercion, which did not happen).
StoreStatus.OVERWRITTEN      0x0000       Stored (policy ``overwrite``).
StoreStatus.KEPT_FIRST       0x0000       Policy ``keep-first`` silently keeps the old
                                          copy; by configuration that is success.
result.warnings              0x0000       Read-time remarks (e.g. an unknown character
                                          set) are not B000/B006/B007 situations: no
                                          element was coerced or discarded. Logged.
UIDMismatch                  0xA900       "Data Set does not match SOP Class".
OutOfResources               0xA700       "Refused: Out of Resources" (retry later).
NotDicom, CannotParse,       0xC000       "Cannot understand" (Cxxx).
MissingAttribute, InvalidUID
DuplicateRejected            0xC000       Not a SOP class mismatch (A900 would mislead),
HierarchyConflict                         so the Cxxx "cannot understand" family, with
                                          the reason in the Error Comment.
any other exception          0xC211       Processing failure of the store handler (as
                                          pynetdicom reports a failing handler).
===========================  ===========  =============================================

Every failure carries the error message as Error Comment (0000,0902), cut to 64 chars.
"""

from __future__ import annotations

from typing import Final

# The shared ingest statuses are re-exported: the DIMSE modules take every status from here.
from dicomvault.model.errors import CANNOT_UNDERSTAND as CANNOT_UNDERSTAND
from dicomvault.model.errors import (
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS as DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
)
from dicomvault.model.errors import OUT_OF_RESOURCES as OUT_OF_RESOURCES
from dicomvault.model.errors import OutOfResources, ingest_failure_status
from dicomvault.model.records import StoreResult, StoreStatus
from dicomvault.net.association import truncate_comment
from dicomvault.net.handlers import SUCCESS, DimseStatus

PROCESSING_FAILURE: Final = 0xC211

#: StoreResult.status -> C-STORE status (all success, see the module docstring).
RESULT_STATUS: Final[dict[StoreStatus, int]] = {
    StoreStatus.STORED: 0x0000,
    StoreStatus.DUPLICATE: 0x0000,
    StoreStatus.OVERWRITTEN: 0x0000,
    StoreStatus.KEPT_FIRST: 0x0000,
}


def status_for_result(result: StoreResult) -> DimseStatus:
    """The C-STORE-RSP status for a successful ingest (PS3.4 B.2.3)."""
    code = RESULT_STATUS[result.status]
    return SUCCESS if code == 0 else DimseStatus(code)


def status_for_error(exc: BaseException) -> DimseStatus:
    """The C-STORE-RSP status and Error Comment for an ingest failure (PS3.4 B.2.3)."""
    code = ingest_failure_status(exc, PROCESSING_FAILURE)
    if isinstance(exc, OSError) and not isinstance(exc, OutOfResources):
        message = exc.strerror or str(exc)
    else:
        message = str(exc) or type(exc).__name__
    return DimseStatus(code, truncate_comment(message))


# -- Query/Retrieve (PS3.4 C.4.1.1.4 Table C.4-1, C.4.2.1.5 Table C.4-2, C.4.3.1.4 C.4-3) ----
#
# ======================================  ======  ===========================================
# outcome                                 status  why
# ======================================  ======  ===========================================
# InvalidQuery                            .status 0xA900 (structure does not fit the model)
#                                                 or 0xC000 (a value cannot be matched), as
#                                                 the query engine decides; message as
#                                                 Error Comment.
# C-FIND result cut by query.max_results  0xA700  "Refused: Out of resources". Table C.4-1
#                                                 has no warning status for C-FIND, and
#                                                 Success would claim the matches sent are
#                                                 all there are. The pending responses sent
#                                                 stay valid; the Error Comment says how many
#                                                 were sent and to narrow the query.
# C-MOVE destination not in [remotes]     0xA801  "Refused: Move Destination unknown".
# no sub-operation could be performed     0xA702  "Refused: Out of resources - Unable to
#   (destination unreachable, refused                perform sub-operations", with counts and
#   the association or every context, a             the Failed SOP Instance UID List; also a
#   C-GET requestor without SCP role)               C-GET without any storage SCP role.
# some sub-operations failed or warned    0xB000  "Sub-operations Complete - One or more
#                                                 Failures or Warnings".
# C-CANCEL                                0xFE00  with the counts so far (C.4.2.3, C.4.3.3).
# archive failure while querying          0xC000  "Unable to process" with the message.
# ======================================  ======  ===========================================

CANCEL: Final = 0xFE00
PENDING: Final = 0xFF00
SUB_OPERATIONS_WARNING: Final = 0xB000
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
UNABLE_TO_PERFORM_SUB_OPERATIONS: Final = 0xA702
UNABLE_TO_PROCESS: Final = 0xC000


def status_for_query_error(exc: BaseException) -> DimseStatus:
    """The C-FIND/C-MOVE/C-GET failure status and Error Comment for ``exc``
    (PS3.4 C.4.1.1.4): the query engine's own status for an invalid Identifier,
    0xA700 for resources, 0xC000 "Unable to process" for anything else."""
    code = getattr(exc, "status", None)
    if not isinstance(code, int):
        code = OUT_OF_RESOURCES if isinstance(exc, OutOfResources | OSError) else UNABLE_TO_PROCESS
    return DimseStatus(code, truncate_comment(str(exc) or type(exc).__name__))
