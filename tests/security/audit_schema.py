"""Validation of DICOM Audit Messages against the schema of PS3.15 A.5.1.1, with lxml:
``data/dicom-audit-message.rng`` is our RELAX NG transcription of it (its header says
from which edition and how).

Used by the audit tests, and by the ``tests/conftest.py`` fixture that validates every
line of every ``audit.log`` a test leaves in its ``tmp_path``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

SCHEMA = Path(__file__).parent / "data" / "dicom-audit-message.rng"
#: Between the RFC 5424 header of a log line and its XML (RFC 5424 6.4: a BOM).
_XML_START = " - \ufeff"


@functools.cache
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


class InvalidAuditMessage(AssertionError):
    """A message the A.5.1 schema rejects; the message says why and where."""


def validate(xml: str | bytes) -> etree._Element:
    """Parse ``xml`` and validate it against the schema; the root element.

    Raises
    ------
    InvalidAuditMessage
        Not well-formed, or not valid.
    """
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    try:
        root = etree.fromstring(data)
    except etree.XMLSyntaxError as exc:
        raise InvalidAuditMessage(f"not well-formed XML: {exc}\n{data[:2000]!r}") from None
    checker = schema()
    if not checker.validate(root):
        errors = "; ".join(f"line {e.line}: {e.message}" for e in checker.error_log)
        raise InvalidAuditMessage(f"invalid per PS3.15 A.5.1: {errors}\n{data[:2000]!r}")
    return root


def xml_of_line(line: str) -> str:
    """The XML of one audit log line (``<PRI>1 … DICOM+RFC3881 - \\ufeff<AuditMessage>``)."""
    head, found, xml = line.partition(_XML_START)
    if not found or not head.startswith("<"):
        raise InvalidAuditMessage(f"not an RFC 5424 audit line: {line[:200]!r}")
    return xml


def validate_log(path: Path) -> int:
    """Validate every complete line of the audit log ``path``; how many there were."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written is not judged
    lines = complete.decode("utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            validate(xml_of_line(line))
        except InvalidAuditMessage as exc:
            raise InvalidAuditMessage(f"{path}, line {number}: {exc}") from None
    return len(lines)


def validate_logs_under(folder: Path) -> int:
    """Validate every audit log under ``folder`` -- ``audit.log`` and the rotated
    ``audit.log.N`` -- as :func:`validate_log`; how many lines there were in all."""
    lines = 0
    for path in sorted(folder.rglob("audit.log*")):
        if path.is_file() and (path.name == "audit.log" or path.suffix[1:].isdigit()):
            lines += validate_log(path)
    return lines
