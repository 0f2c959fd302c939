"""UIDs the engine needs: application context, transfer syntaxes, SOP classes (PS3.6 A).

The list of storage SOP classes is taken from pydicom's UID dictionary at import time
(every entry whose name ends with "Storage"), so it follows pydicom releases.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary

#: DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
#: Verification SOP Class (PS3.4 A.4).
VERIFICATION = "1.2.840.10008.1.1"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: Transfer syntaxes whose data sets are not encapsulated (PS3.5 A.1-A.5).
UNCOMPRESSED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

#: Transfer syntaxes an acceptor takes by default, stored as received.
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    RLE_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
)

#: Every storage SOP class pydicom knows (PS3.4 B.5), in dictionary order.
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(
    uid
    for uid, entry in UID_dictionary.items()
    if entry[1] == "SOP Class" and entry[0].endswith("Storage")
)


def uid_name(uid: str) -> str:
    """Return the PS3.6 name of ``uid``, or ``uid`` itself when pydicom does not know it."""
    entry = UID_dictionary.get(uid)
    return str(entry[0]) if entry else uid


#: Query/Retrieve SOP classes (PS3.4 C.6.1.1-C.6.2.3).
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.1).
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3, J.4).
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Modality Performed Procedure Step SOP Class (PS3.4 F.7.3).
MPPS = "1.2.840.10008.3.1.2.3.3"
