"""UID syntax per PS3.5 9.1: components of digits separated by dots, no leading zero in a
multi-digit component, at most 64 characters."""

from __future__ import annotations

import re

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LENIENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def uid_problem(value: str | None, *, strict: bool = False) -> str | None:
    """Return why ``value`` is not a valid UID, or ``None`` when it is.

    ``strict=False`` tolerates leading zeros in components, which real modalities write
    and every archive accepts; letters, empty components, path characters and over-long
    values are always refused.
    """
    if value is None or value == "":
        return "is empty"
    if len(value) > 64:
        return f"is {len(value)} characters long (at most 64)"
    pattern = _UID if strict else _LENIENT
    if not pattern.match(value):
        return "is not digits separated by dots"
    return None
