"""What the Basic Application Level Confidentiality Profile and its options say (PS3.15
E.1, E.3): the options dicomvault provides, their CID 7050 codes, and which action of a
Table E.1-1 row applies — the choices between the table's alternatives are explained in
:mod:`dicomvault.dicom.deidentify`, which applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dicomvault.dicom.deid_table import Row

RetainDates = Literal["none", "full", "modified"]

#: PS3.16 CID 7050 "De-identification Method" (coding scheme DCM).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: dict[str, tuple[str, str]] = {
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

#: Table E.1-1a combined actions → what we apply (why: dicomvault.dicom.deidentify).
_COMBINED = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}


@dataclass(frozen=True)
class Options:
    """The options of the Basic Profile that dicomvault provides (PS3.15 E.3).

    Not provided: Clean Pixel Data, Clean Recognizable Visual Features, Clean Graphics and
    Clean Structured Content (their rows get the basic action).
    """

    retain_uids: bool = False
    retain_dates: RetainDates = "none"
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_safe_private: bool = False
    clean_descriptors: bool = False

    def active(self) -> frozenset[str]:
        """The option names of Table E.1-1's columns that are on."""
        names = {
            name
            for name in (
                "retain_uids",
                "retain_patient_characteristics",
                "retain_device_identity",
                "retain_institution_identity",
                "retain_safe_private",
                "clean_descriptors",
            )
            if getattr(self, name)
        }
        if self.retain_dates == "full":
            names.add("retain_full_dates")
        elif self.retain_dates == "modified":
            names.add("retain_modified_dates")
        return frozenset(names)

    def codes(self) -> list[tuple[str, str]]:
        """CID 7050 codes of the profile and the active options, in code order."""
        active = self.active()
        chosen = sorted(code for name, code in OPTION_CODES.items() if name in active)
        return [BASIC_PROFILE_CODE, *chosen]


def resolve(row: Row, active: frozenset[str]) -> str:
    """The action applied for ``row`` with the options ``active``: K, C, X, Z, D, U or
    U* (a sequence of references kept with its UIDs remapped)."""
    _, basic, options = row
    chosen = {action for option, action in options.items() if option in active}
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return _COMBINED.get(basic, basic)
