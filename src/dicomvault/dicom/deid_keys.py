"""Keyed replacements for de-identification (PS3.15 E.1.1): new UIDs, patient pseudonyms
and the per-patient date offset, all derived from one archive secret with HMAC-SHA256.

Derived, not stored: the same secret maps the same original value to the same
replacement in every run and every process, so the instances of a study de-identified at
different times (or on different nodes sharing the secret) still reference each other,
and the de-identified studies of one patient keep one pseudonym. Without the secret the
mapping cannot be reversed or recomputed (RFC 2104: HMAC is a PRF keyed by the secret).
Each kind of value is hashed under its own label, so a UID never collides with a
pseudonym computed from the same text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

#: PS3.5 9.1 / B.2: a UID under the root 2.25 is the decimal of a 128-bit number; no
#: organisation root needs registering.
UUID_ROOT = "2.25."
#: UIDs the standard itself defines (SOP classes, transfer syntaxes, well-known frames of
#: reference, coding schemes): they identify no patient and are kept (PS3.6 Annex A).
DICOM_ROOT = "1.2.840.10008."
PSEUDONYM_PREFIX = "ANON-"
#: Dates move back by 1 to this many days (about ten years): whole days, so weekdays
#: change but intervals between a patient's dates do not (PS3.15 E.3.6).
MAX_DATE_SHIFT_DAYS = 3652
SECRET_BYTES = 32


@dataclass(frozen=True)
class DeidKeys:
    """The secret and the three derivations. ``secret`` is at least 16 bytes."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 bytes")

    def _digest(self, label: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{label}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.`` and the decimal of the first 128 bits of HMAC-SHA256(secret, UID).

        A UID of the standard's own root (:data:`DICOM_ROOT`) and an empty value are
        returned as they are.
        """
        original = original.strip("\0 ")
        if not original or original.startswith(DICOM_ROOT):
            return original
        return UUID_ROOT + str(int.from_bytes(self._digest("uid", original)[:16], "big"))

    def pseudonym(self, patient: str) -> str:
        """``ANON-`` and 10 base32 characters (50 bits) of the keyed hash of the patient's
        identity: the new Patient ID and Patient's Name of every instance of that patient."""
        text = base64.b32encode(self._digest("patient", patient)).decode("ascii")
        return PSEUDONYM_PREFIX + text[:10]

    def date_shift_days(self, patient: str) -> int:
        """How many days the patient's dates move: a negative whole number of days in
        ``[-MAX_DATE_SHIFT_DAYS, -1]``, the same for every instance of the patient."""
        number = int.from_bytes(self._digest("date", patient)[:8], "big")
        return -(1 + number % MAX_DATE_SHIFT_DAYS)
