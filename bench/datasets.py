"""Deterministic synthetic DICOM data sets for benchmarks and tests.

Every generator is a pure function of its arguments: the same call writes
byte-identical files (fixed seeds, UIDs derived from the seed, fixed dates and
a fixed implementation UID in the file meta).  Pixel content is a cheap
deterministic pattern, so generating a thousand 0.5 MB instances takes only
seconds.

Command line::

    python -m bench.datasets ct OUT_DIR --count 1000
    python -m bench.datasets small OUT_DIR --count 2000
    python -m bench.datasets multiframe OUT_DIR --size-bytes 1073741824
"""

from __future__ import annotations

import argparse
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

__all__ = [
    "CT_IMAGE_STORAGE",
    "MULTIFRAME_WORD_SC_STORAGE",
    "SECONDARY_CAPTURE_STORAGE",
    "cached",
    "ct_series",
    "derive_uid",
    "large_multiframe",
    "query_studies",
    "small_instances",
]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_WORD_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.3")

#: Fixed implementation identification, so files do not depend on the pydicom version.
IMPLEMENTATION_CLASS_UID = UID("2.25.302335745404373431473262632958420493114")
IMPLEMENTATION_VERSION_NAME = "DVBENCH_1"

#: Largest value a defined-length (non-undefined) 32-bit element length may take.
_MAX_DEFINED_LENGTH = 0xFFFFFFFE
#: Bytes written per call when streaming multi-frame pixel data.
_STREAM_CHUNK_FRAMES = 16

_DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


def derive_uid(seed: int, *parts: object) -> UID:
    """Return a deterministic ``2.25.<int>`` UID derived from ``seed`` and ``parts``.

    The UID is the decimal form of the first 128 bits of a SHA-256 digest, so
    it is globally unique in practice yet fully reproducible.
    """
    text = "/".join(str(p) for p in ("dicomvault-bench", seed, *parts))
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    return UID(f"2.25.{value}")


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _patient_study(ds: Dataset, seed: int, patient: int, study: int, *, description: str) -> None:
    """Fill patient and study level attributes (deterministic in their arguments)."""
    ds.PatientName = f"BENCH^PATIENT{patient:04d}^S{seed}"
    ds.PatientID = f"BP{seed:03d}{patient:05d}"
    year = 1940 + (patient * 7 + seed) % 60
    ds.PatientBirthDate = f"{year}{1 + patient % 12:02d}{1 + patient % 28:02d}"
    ds.PatientSex = "MF"[patient % 2]
    ds.StudyInstanceUID = derive_uid(seed, "study", patient, study)
    ds.StudyDate = f"2024{1 + study % 12:02d}{1 + (patient + study) % 28:02d}"
    ds.StudyTime = f"{8 + study % 10:02d}{(patient * 13) % 60:02d}00"
    ds.StudyDescription = description
    ds.StudyID = f"{study + 1}"
    ds.AccessionNumber = f"A{seed:02d}{patient:05d}{study:03d}"
    ds.ReferringPhysicianName = "BENCH^REFERRER"


def _finish(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def ct_series(
    out_dir: Path,
    count: int,
    *,
    rows: int = 512,
    cols: int = 512,
    seed: int = 1,
    patients: int = 1,
    studies_per_patient: int = 1,
    series_per_study: int = 1,
) -> list[Path]:
    """Write ``count`` CT Image Storage instances to ``out_dir`` and return their paths.

    Explicit VR Little Endian, 16-bit MONOCHROME2 pixel data (``rows * cols * 2``
    bytes, about 0.5 MB at 512x512) and a realistic CT header.  The instances are
    split into contiguous blocks over ``patients * studies_per_patient *
    series_per_study`` series.
    """
    if count < 0 or min(rows, cols, patients, studies_per_patient, series_per_study) < 1:
        raise ValueError("count must be >= 0 and every other size >= 1")
    out_dir = Path(out_dir)
    groups = patients * studies_per_patient * series_per_study
    rng = np.random.default_rng(seed)
    base = (rng.integers(0, 2000, size=rows * cols, dtype=np.uint16)).reshape(rows, cols)
    paths: list[Path] = []
    for i in range(count):
        group = i * groups // count
        first_in_group = -(-group * count // groups)  # ceil: first i with the same group
        number = i - first_in_group + 1
        patient, rest = divmod(group, studies_per_patient * series_per_study)
        study, series = divmod(rest, series_per_study)

        sop_uid = derive_uid(seed, "ct", i)
        ds = Dataset()
        ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.ContentDate = "20240101"
        ds.ContentTime = "120000"
        ds.Modality = "CT"
        ds.Manufacturer = "DICOMVAULT BENCH"
        ds.InstitutionName = "Synthetic Hospital"
        ds.BodyPartExamined = "CHEST"
        ds.KVP = "120"
        ds.SliceThickness = "1.25"
        ds.PatientPosition = "HFS"
        _patient_study(ds, seed, patient, study, description="BENCH CT CHEST")
        ds.SeriesInstanceUID = derive_uid(seed, "series", patient, study, series)
        ds.SeriesNumber = series + 1
        ds.SeriesDescription = f"AXIAL 1.25 MM {series + 1}"
        ds.InstanceNumber = number
        ds.FrameOfReferenceUID = derive_uid(seed, "for", patient, study)
        ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-1.25 * number:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{-1.25 * number:.2f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = ["0.9765625", "0.9765625"]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        pixels = np.roll(base, i, axis=1)
        pixels += np.uint16(i % 1000)
        ds.PixelData = pixels.tobytes()
        paths.append(_finish(ds, out_dir / f"ct_{i:06d}.dcm"))
    return paths


def _secondary_capture_header(ds: Dataset, seed: int, i: int, sop_class: UID) -> None:
    sop_uid = derive_uid(seed, "sc", sop_class, i)
    ds.file_meta = _file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "DICOMVAULT BENCH"
    _patient_study(ds, seed, 0, 0, description="BENCH SECONDARY CAPTURE")
    ds.SeriesInstanceUID = derive_uid(seed, "series", sop_class)
    ds.SeriesNumber = 1
    ds.InstanceNumber = i + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"


def small_instances(out_dir: Path, count: int, *, size: int = 10_000, seed: int = 2) -> list[Path]:
    """Write ``count`` Secondary Capture instances of about ``size`` bytes each.

    8-bit MONOCHROME2, 64 columns wide, Explicit VR Little Endian; the row count
    is chosen so the whole file is close to ``size`` bytes (at least one row).
    """
    if count < 0 or size < 1:
        raise ValueError("count must be >= 0 and size >= 1")
    out_dir = Path(out_dir)
    cols = 64
    header_estimate = 1_000  # file preamble + meta + header attributes, measured ~900 bytes
    rows = max(1, (size - header_estimate) // cols)
    pattern = np.arange(rows * cols, dtype=np.uint32).astype(np.uint8).reshape(rows, cols)
    paths: list[Path] = []
    for i in range(count):
        ds = Dataset()
        _secondary_capture_header(ds, seed, i, SECONDARY_CAPTURE_STORAGE)
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = (pattern + np.uint8(i % 251)).tobytes()
        paths.append(_finish(ds, out_dir / f"sc_{i:06d}.dcm"))
    return paths


def _frame(base: np.ndarray, index: int) -> bytes:
    return (base + np.uint16(index % 4096)).tobytes()


def large_multiframe(path: Path, *, size_bytes: int = 1 << 30, seed: int = 3) -> Path:
    """Write one Multi-frame Grayscale Word SC instance of about ``size_bytes`` and return ``path``.

    Frames are 512x512 16-bit; the frame count is ``size_bytes // 524288`` (at
    least 1).  The file is written in streaming fashion with flat memory: pydicom
    writes the file meta and the data set up to Pixel Data, then the (7FE0,0010)
    OW element header with its exact defined length is appended and the frames
    are written in chunks.
    """
    path = Path(path)
    rows = cols = 512
    frame_bytes = rows * cols * 2
    frames = max(1, size_bytes // frame_bytes)
    pixel_length = frames * frame_bytes
    if pixel_length > _MAX_DEFINED_LENGTH:
        raise ValueError(f"size_bytes {size_bytes} exceeds the 32-bit element length limit")

    ds = Dataset()
    _secondary_capture_header(ds, seed, 0, MULTIFRAME_WORD_SC_STORAGE)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = "100"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2048, size=rows * cols, dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fp:
        dcmwrite(fp, ds, enforce_file_format=True)
        fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_length))
        for start in range(0, frames, _STREAM_CHUNK_FRAMES):
            stop = min(frames, start + _STREAM_CHUNK_FRAMES)
            fp.write(b"".join(_frame(base, f) for f in range(start, stop)))
    return path


#: Modalities of :func:`query_studies` (one per study, uniformly).
QUERY_MODALITIES = ("CT", "MR", "CR", "US", "DX", "MG", "PT", "OT")
_SYLLABLES = ("ka", "ro", "mi", "ta", "su", "ne", "lo", "ber", "shi", "van", "der", "son", "ez")


def query_studies(out_dir: Path, count: int, *, seed: int = 4, months: int = 30) -> list[Path]:
    """Write ``count`` studies of one tiny instance each, for C-FIND benchmarks.

    Secondary Capture (8x8, 8-bit, ~1 KB), one series per study; ``count // 2``
    patients with syllable family names (``KAROMI^Suta``), PatientID ``QP<n>``, two
    studies each on average; StudyDate uniform over ``months`` months from 2022-01;
    Modality uniform over :data:`QUERY_MODALITIES`; AccessionNumber ``QA<study>``.
    """
    import random

    if count < 0 or months < 1:
        raise ValueError("count must be >= 0 and months >= 1")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    patient_count = max(1, count // 2)

    def family() -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).upper()

    names = [f"{family()}^{family().title()}" for _ in range(patient_count)]
    paths: list[Path] = []
    for i in range(count):
        patient = rng.randrange(patient_count)
        month = rng.randrange(months)
        sop_uid = derive_uid(seed, "query", i)
        ds = Dataset()
        ds.file_meta = _file_meta(SECONDARY_CAPTURE_STORAGE, sop_uid)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = SECONDARY_CAPTURE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.Modality = rng.choice(QUERY_MODALITIES)
        ds.ConversionType = "WSD"
        ds.PatientName = names[patient]
        ds.PatientID = f"QP{patient:06d}"
        ds.PatientBirthDate = f"19{rng.randint(30, 99)}0101"
        ds.PatientSex = rng.choice("MFO")
        ds.StudyInstanceUID = derive_uid(seed, "query-study", i)
        ds.StudyDate = f"{2022 + month // 12}{1 + month % 12:02d}{rng.randint(1, 28):02d}"
        ds.StudyTime = f"{rng.randint(0, 23):02d}3000"
        ds.StudyDescription = "BENCH QUERY"
        ds.StudyID = str(i + 1)
        ds.AccessionNumber = f"QA{i:07d}"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = derive_uid(seed, "query-series", i)
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = 8
        ds.Columns = 8
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(i % 64, i % 64 + 64))
        paths.append(_finish(ds, out_dir / f"q_{i:06d}.dcm"))
    return paths


def _multiframe_set(out_dir: Path, count: int, **params: int) -> list[Path]:
    if count != 1:
        raise ValueError("a multiframe data set holds exactly one instance")
    return [large_multiframe(Path(out_dir) / "multiframe.dcm", **params)]


def cached(
    kind: str,
    count: int,
    *,
    cache_root: Path | None = None,
    **params: int,
) -> list[Path]:
    """Return the files of a ``ct``, ``small``, ``multiframe`` or ``query`` set,
    generating it once.

    ``params`` are passed to the generator (``count`` must be 1 for ``multiframe``).

    Files live in ``bench/.cache/<kind>-<count>-<k>=<v>...`` (or under
    ``cache_root``).  A ``.complete`` marker guards against half-written
    directories from an interrupted run.
    """
    generators: dict[str, Callable[..., list[Path]]] = {
        "ct": ct_series,
        "small": small_instances,
        "multiframe": _multiframe_set,
        "query": query_studies,
    }
    if kind not in generators:
        raise ValueError(f"unknown data set kind {kind!r}")
    key = "-".join([kind, str(count), *(f"{k}={params[k]}" for k in sorted(params))])
    directory = (cache_root or _DEFAULT_CACHE) / key
    marker = directory / ".complete"
    if marker.exists():
        return sorted(directory.glob("*.dcm"))
    paths = generators[kind](directory, count, **params)
    marker.write_text("ok\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: ``python -m bench.datasets ct|small|multiframe OUT_DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=["ct", "small", "multiframe"])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=100, help="instances (ct, small)")
    parser.add_argument("--seed", type=int, default=None, help="override the default seed")
    parser.add_argument("--size", type=int, default=10_000, help="bytes per small instance")
    parser.add_argument("--size-bytes", type=int, default=1 << 30, help="multiframe file size")
    parser.add_argument("--patients", type=int, default=1, help="ct: number of patients")
    args = parser.parse_args(argv)

    seed_kw = {} if args.seed is None else {"seed": args.seed}
    if args.kind == "ct":
        paths = ct_series(args.out_dir, args.count, patients=args.patients, **seed_kw)
    elif args.kind == "small":
        paths = small_instances(args.out_dir, args.count, size=args.size, **seed_kw)
    else:
        target = args.out_dir / "multiframe.dcm"
        paths = [large_multiframe(target, size_bytes=args.size_bytes, **seed_kw)]
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total / 1e6:.1f} MB, to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
