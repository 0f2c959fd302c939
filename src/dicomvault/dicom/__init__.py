"""Everything that touches pydicom for ingest: header parsing, index records, DICOM JSON.

Imports pydicom and :mod:`dicomvault.model` only (DESIGN.md, layers).
"""

from __future__ import annotations

from dicomvault.dicom.dicomdir import dicomdir_references, is_dicomdir
from dicomvault.dicom.parse import ParsedInstance, parse_instance
from dicomvault.dicom.part10 import encode_file_meta, read_preamble_layout

__all__ = [
    "ParsedInstance",
    "dicomdir_references",
    "encode_file_meta",
    "is_dicomdir",
    "parse_instance",
    "read_preamble_layout",
]
