"""Transcoding a stored data set to a transfer syntax a receiver accepted (PS3.5 8, A.4).

Used only when a C-MOVE/C-GET receiver did not accept an instance's stored syntax
(DESIGN.md: stream as stored when possible, transcode only when the peer needs it).

Codecs are pydicom 3's pixel data plugins; the set chosen among what pip installs here
(all ship manylinux wheels, nothing is compiled):

- ``python-gdcm`` (BSD) decodes JPEG baseline (process 1), JPEG lossless (process 14 and
  its SV1), JPEG-LS and JPEG 2000 in one wheel. The alternative for the JPEG processes,
  ``pylibjpeg-libjpeg``, is GPLv3 (libjpeg by T. Richter): not acceptable as a
  dependency of an MIT project. Its one gain, 12-bit JPEG extended (process 2/4), which
  GDCM's pydicom plugin refuses, is left out: such an instance fails its sub-operation
  with an Error Comment unless the receiver takes it as stored. An installation that
  accepts the GPL can add ``pylibjpeg-libjpeg``; pydicom picks it up by itself.
- ``pylibjpeg`` + ``pylibjpeg-openjpeg`` (MIT, OpenJPEG) decode and *encode* JPEG 2000;
  ``pylibjpeg-rle`` (MIT) decodes and encodes RLE Lossless fast (pydicom's numpy RLE
  codec is the fall-back); ``pyjpegls`` (MIT, CharLS BSD) decodes and encodes JPEG-LS.
- Encoding (a receiver that accepted only a compressed syntax) is lossless only, in the
  order RLE, JPEG-LS lossless, JPEG 2000 lossless: an archive never makes a lossy copy on
  its own.

Decompressed pixel data is re-encoded as native (uncompressed) little endian; the
dataset's other elements are written unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID

from dicomvault.dicom.part10 import HEAD_SIZE, encode_file_meta, read_file_meta

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: Lossless syntaxes we can encode to, in order of preference.
LOSSLESS_ENCODINGS = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
)


class TranscodeError(ValueError):
    """The data set cannot be converted to any of the requested transfer syntaxes."""


def transcode(data_set: bytes, source_syntax: str, targets: Sequence[str]) -> tuple[str, bytes]:
    """Re-encode ``data_set`` (encoded in ``source_syntax``) in one of ``targets``.

    Native little endian targets are preferred (decompression is exact); a lossless
    compressed target is used only when no native one is offered.

    Parameters
    ----------
    data_set
        The data set bytes, without file meta.
    source_syntax
        Its transfer syntax UID.
    targets
        Transfer syntaxes the receiver accepted for the SOP class.

    Returns
    -------
    tuple of (str, bytes)
        The chosen transfer syntax and the encoded data set.

    Raises
    ------
    TranscodeError
        No codec for the source syntax, or none of ``targets`` can be produced.
    """
    order = [t for t in NATIVE if t in targets] + [t for t in LOSSLESS_ENCODINGS if t in targets]
    if not order:
        raise TranscodeError(f"cannot encode to any of {', '.join(targets)}")
    ds = _read(data_set, source_syntax)
    errors: list[str] = []
    compressed = UID(source_syntax).is_compressed and "PixelData" in ds
    for target in order:
        try:
            if compressed:
                ds.decompress(generate_instance_uid=False)
            if target in LOSSLESS_ENCODINGS and "PixelData" in ds:
                ds.compress(target, generate_instance_uid=False)
            return target, _write(ds, target)
        except Exception as exc:  # a missing plugin, an unsupported pixel layout
            errors.append(f"{UID(target).name}: {exc}")
            ds = _read(data_set, source_syntax)
    raise TranscodeError("; ".join(errors)[:500])


def transcode_file(
    part10: bytes, sop_class_uid: str, sop_instance_uid: str, source_syntax: str, target: str
) -> bytes:
    """A Part 10 file held in memory, re-encoded in ``target`` (PS3.18 8.7.3.5.2): its data
    set transcoded, a new File Meta Information in front.

    Raises
    ------
    TranscodeError
        No codec for ``source_syntax``, or ``target`` cannot be produced.
    """
    offset = read_file_meta(part10[:HEAD_SIZE]).dataset_offset
    chosen, data_set = transcode(part10[offset:], source_syntax, [target])
    return encode_file_meta(sop_class_uid, sop_instance_uid, chosen) + data_set


def _read(data_set: bytes, syntax: str):  # type: ignore[no-untyped-def]
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(syntax)
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=False)
    return dcmread(BytesIO(buf.getvalue() + data_set), force=True)


def _write(ds, syntax: str) -> bytes:  # type: ignore[no-untyped-def]
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(out, ds)
    return bytes(out.getvalue())
