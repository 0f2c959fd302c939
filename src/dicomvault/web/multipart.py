"""Writing ``multipart/related`` bodies (RFC 2387, PS3.18 8.7.1.3).

Layout, as OHIF parses it (VIEWERS.md): every part is ``--BOUNDARY CRLF``, its headers
with ``Content-Type:`` spelt exactly so, a blank line, the payload, CRLF; the body ends
with ``--BOUNDARY--`` CRLF. A payload therefore ends two bytes before the next boundary.
"""

from __future__ import annotations

import uuid


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM payloads by chance (128 random bits)."""
    return f"dicomvault-{uuid.uuid4().hex}"


def multipart_type(related_type: str, boundary: str, **params: str) -> str:
    """The response ``Content-Type``: ``multipart/related; type="…"; boundary=…`` plus
    ``params`` (e.g. ``transfer_syntax="1.2.840.10008.1.2.1"`` → ``transfer-syntax=…``)."""
    text = f'multipart/related; type="{related_type}"'
    for name, value in params.items():
        text += f"; {name.replace('_', '-')}={value}"
    return text + f"; boundary={boundary}"


def part_head(
    boundary: str,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> bytes:
    """The boundary line and headers that open one part."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if headers:
        lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


PART_END = b"\r\n"


def closing(boundary: str) -> bytes:
    """The close delimiter that ends the body."""
    return f"--{boundary}--\r\n".encode("latin-1")
