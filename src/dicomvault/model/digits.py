"""Is a string a plain unsigned decimal number? One test for every parser of numbers that
come from outside (HTTP parameters, HL7 fields, CLI options, DICOM paths)."""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    """True when ``text`` is one or more of the characters 0-9.

    ``str.isdigit()`` alone is not that: it is also true of "²" and other Unicode digits,
    which ``int()`` refuses — a "²" in a frame list or an HL7 time raised ``ValueError``
    where a 400 or a NACK was due.
    """
    return text.isascii() and text.isdigit()
