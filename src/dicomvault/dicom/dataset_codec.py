"""Small data sets of DIMSE messages (PS3.7 6.3.1: Action/Event Information, Attribute
and Modification Lists) to and from their bytes in a presentation context's transfer
syntax, with pydicom. Deflated Explicit VR Little Endian is inflated/deflated here
(PS3.5 A.5), so callers never care which little-endian syntax was negotiated."""

from __future__ import annotations

import io
import warnings
import zlib

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from dicomvault.model.errors import CannotParse

#: Data sets in DIMSE-N messages are small; anything bigger is refused rather than parsed.
MAX_INFLATED = 1 << 24


def _syntax(transfer_syntax_uid: str) -> UID:
    uid = UID(transfer_syntax_uid)
    if not uid.is_transfer_syntax:
        raise CannotParse(f"unknown transfer syntax {transfer_syntax_uid}")
    return uid


def decode_data_set(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """The data set ``data`` encoded in ``transfer_syntax_uid``.

    Raises
    ------
    CannotParse
        Truncated or malformed data, or nesting too deep to parse.
    """
    uid = _syntax(transfer_syntax_uid)
    if uid.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, MAX_INFLATED)
        except zlib.error as exc:
            raise CannotParse(f"deflated data set does not inflate: {exc}") from exc
        if inflater.unconsumed_tail:
            raise CannotParse("deflated data set inflates to more than 16 MiB")
    try:
        ds = read_dataset(io.BytesIO(data), uid.is_implicit_VR, uid.is_little_endian)
        # Convert every value now, so a malformed one fails here and not later. Values
        # that break their VR's rules are data for the caller to judge (a Transaction
        # UID with letters gets its own status), not a reason to refuse the data set.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for element in ds.iterall():
                _ = element.value
    except RecursionError as exc:
        raise CannotParse("data set nested too deep") from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise CannotParse(f"data set does not parse: {exc}") from exc
    return ds


def encode_data_set(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """``ds`` encoded in ``transfer_syntax_uid`` (deflated when that syntax says so)."""
    uid = _syntax(transfer_syntax_uid)
    buf = DicomBytesIO()
    buf.is_implicit_VR = uid.is_implicit_VR
    buf.is_little_endian = uid.is_little_endian
    write_dataset(buf, ds)
    raw = buf.getvalue()
    if uid.is_deflated:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = compressor.compress(raw) + compressor.flush()
    return bytes(raw)
