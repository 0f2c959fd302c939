"""De-identified copies of instances (PS3.15 Annex E) for ``dicomvault anonymize`` and
for the WADO-RS retrievals of researchers: the archive's secret, reading the instances
of stored studies, staging de-identified files and committing them all or none.

All or nothing (DEVELOPERS.md): every instance is de-identified into a staging folder
first; only when all of them succeeded are the files moved into the output folder
(one rename each, same filesystem), stored in the archive (the new instances are deleted
again if storing one fails) or sent. A refused or unreadable instance leaves no output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.archive.archive import Archive
from dicomvault.archive.retrieval import instances_of, open_blob
from dicomvault.config import Settings
from dicomvault.dicom.deid_keys import SECRET_BYTES, DeidKeys
from dicomvault.dicom.deidentify import Deidentified, Options, deidentify
from dicomvault.dicom.dicomdir import is_dicomdir
from dicomvault.dicom.transcode import transcode_file
from dicomvault.model.errors import ConfigError, DicomVaultError, NotDicom
from dicomvault.model.records import StoredInstance, StoreResult, StoreStatus

#: The archive's generated secret, in the data directory (mode 0600).
KEY_FILE = "deidentify.key"
#: Output files are named by us, never from a DICOM value: IMG00001.dcm, IMG00002.dcm…
_OUTPUT_NAME = re.compile(r"^IMG(\d+)\.dcm$")


def deid_keys(settings: Settings) -> DeidKeys:
    """The de-identification secret: ``deidentify.secret``, else the data directory's
    ``deidentify.key``, created once with 32 random bytes and mode 0600 (written under
    a temporary name and linked into place, so concurrent first uses agree on one key).

    Raises
    ------
    ConfigError
        The key file exists but is shorter than 16 bytes or cannot be read or created.
    """
    configured = settings.deidentify.secret.get_secret_value()
    if configured:
        return DeidKeys(configured.encode("utf-8"))
    path = settings.storage.path / KEY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = _create_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the de-identification key {path}: {exc}") from exc
    if len(raw) < 16:
        raise ConfigError(f"the de-identification key {path} is shorter than 16 bytes")
    return DeidKeys(raw)


def _create_key(path: Path) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".deidentify-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # fails if another process created it meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot create the de-identification key {path}: {exc}") from exc


def wado_options(settings: Settings) -> Options:
    """The options of researchers' WADO-RS retrievals (``deidentify.wado_*``)."""
    s = settings.deidentify
    return Options(
        retain_uids=s.wado_retain_uids,
        retain_dates=s.wado_retain_dates,
        retain_patient_characteristics=s.wado_retain_patient_characteristics,
        retain_device_identity=s.wado_retain_device_identity,
        retain_institution_identity=s.wado_retain_institution_identity,
        retain_safe_private=s.wado_retain_safe_private,
        clean_descriptors=s.wado_clean_descriptors,
    )


def served_copies(
    archive: Archive,
) -> Callable[[StoredInstance], Deidentified]:
    """De-identify stored instances with the options of copies the server hands out
    (``deidentify.wado_*``: researchers over WADO-RS, remote AEs with ``deidentify``)."""
    settings = archive.settings
    keys, options = deid_keys(settings), wado_options(settings)
    allow = settings.deidentify.wado_allow_burned_in

    def copy(instance: StoredInstance) -> Deidentified:
        return deidentified_instance(archive, instance, keys, options, allow_burned_in=allow)

    return copy


def deidentified_instance(
    archive: Archive,
    instance: StoredInstance,
    keys: DeidKeys,
    options: Options,
    *,
    allow_burned_in: bool = False,
) -> Deidentified:
    """A stored instance, de-identified (as a whole Part 10 file in memory).

    Raises
    ------
    DeidentificationRefused, CannotParse, MissingAttribute
    """
    with open_blob(archive, instance) as fp:
        return deidentify(
            fp,
            keys,
            options,
            allow_burned_in=allow_burned_in,
            name=f"instance {instance.sop_instance_uid} of study {instance.study_instance_uid}",
        )


def deidentified_file(
    archive: Archive,
    instance: StoredInstance,
    keys: DeidKeys,
    options: Options,
    *,
    transfer_syntax: str | None = None,
    allow_burned_in: bool = False,
) -> bytes:
    """A stored instance, de-identified, as a Part 10 file in ``transfer_syntax``
    (``None``: as stored), transcoded after de-identification when it differs
    (PS3.18 8.7.3.5.2, as :func:`~dicomvault.archive.retrieval.transcoded_file`).

    Raises
    ------
    DeidentificationRefused, CannotParse, MissingAttribute, TranscodeError
    """
    result = deidentified_instance(
        archive, instance, keys, options, allow_burned_in=allow_burned_in
    )
    if transfer_syntax in (None, result.transfer_syntax_uid):
        return result.data
    return transcode_file(
        result.data,
        result.sop_class_uid,
        result.sop_instance_uid,
        result.transfer_syntax_uid,
        transfer_syntax,
    )


def burned_in(metadata_json: str | None) -> bool:
    """Whether an instance's stored DICOM JSON says Burned In Annotation (0028,0301) YES
    (checked before a response starts, so a refusal is a clean HTTP error)."""
    if not metadata_json or '"00280301"' not in metadata_json:
        return False
    values = json.loads(metadata_json).get("00280301", {}).get("Value", [])
    return any(str(v).strip().upper() == "YES" for v in values)


# -- sources ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """One instance to de-identify: a file, or a stored instance."""

    label: str
    path: Path | None = None
    stored: StoredInstance | None = None
    #: Named on the command line (not found in a folder): not being DICOM is an error.
    explicit: bool = True


def file_sources(paths: Iterable[Path]) -> list[Source]:
    """Files named, and the files under folders named (recursively, sorted per folder).

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    out: list[Source] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                out.extend(
                    Source(str(Path(root) / name), path=Path(root) / name, explicit=False)
                    for name in sorted(files)
                )
        elif path.exists():
            out.append(Source(str(path), path=path))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return out


def study_sources(archive: Archive, study_uids: Sequence[str]) -> list[Source]:
    """Every instance of each study, in series and instance order.

    Raises
    ------
    NotFound
        A study is not in the archive.
    """
    out: list[Source] = []
    for study in dict.fromkeys(study_uids):
        for instance, _ in instances_of(archive, study):
            out.append(
                Source(f"study {study} instance {instance.sop_instance_uid}", stored=instance)
            )
    return out


# -- staging ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Staged:
    """A de-identified file in the staging folder."""

    path: Path
    source: Source
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    original_study_instance_uid: str
    size: int


@dataclass
class Staging:
    """What :func:`stage` produced: files, and the sources that failed or were skipped."""

    folder: Path
    staged: list[Staged] = field(default_factory=list)
    #: (source, reason): the source could not be de-identified.
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: (source, reason): a file found in a folder that is not DICOM.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def studies(self) -> dict[str, dict[str, int]]:
        """Original Study Instance UID → SOP Class UID → instances (for the audit)."""
        out: dict[str, dict[str, int]] = {}
        for item in self.staged:
            counts = out.setdefault(item.original_study_instance_uid, {})
            counts[item.sop_class_uid] = counts.get(item.sop_class_uid, 0) + 1
        return out


def stage(
    archive: Archive | None,
    sources: Sequence[Source],
    keys: DeidKeys,
    options: Options,
    folder: Path,
    *,
    allow_burned_in: bool = False,
    on_done: Callable[[Source], None] | None = None,
) -> Staging:
    """De-identify every source into ``folder`` (``IMG00001.dcm``…); it goes on past a
    failure so that every problem is reported at once, but a caller must publish nothing
    unless :attr:`Staging.ok`."""
    staging = Staging(folder)
    for source in sources:
        try:
            result = _deidentify_source(archive, source, keys, options, allow_burned_in)
        except NotDicom as exc:
            if source.explicit:
                staging.failed.append((source.label, str(exc)))
            else:
                staging.skipped.append((source.label, str(exc)))
        except (DicomVaultError, OSError) as exc:
            reason = str(exc)
            reason = reason.removeprefix(f"{source.label}: ")  # the engine named it too
            staging.failed.append((source.label, reason))
        else:
            path = folder / f"IMG{len(staging.staged) + 1:05d}.dcm"
            path.write_bytes(result.data)
            staging.staged.append(
                Staged(
                    path,
                    source,
                    result.sop_class_uid,
                    result.sop_instance_uid,
                    result.study_instance_uid,
                    result.original_study_instance_uid,
                    len(result.data),
                )
            )
        if on_done is not None:
            on_done(source)
    return staging


def _deidentify_source(
    archive: Archive | None,
    source: Source,
    keys: DeidKeys,
    options: Options,
    allow_burned_in: bool,
) -> Deidentified:
    if source.stored is not None:
        if archive is None:  # pragma: no cover - callers open the archive for studies
            raise ValueError("a stored instance needs the archive")
        return deidentified_instance(
            archive, source.stored, keys, options, allow_burned_in=allow_burned_in
        )
    if source.path is None:  # pragma: no cover
        raise ValueError("a source is a file or a stored instance")
    if source.path.is_symlink() or not source.path.is_file():
        # Found in a folder: a device, a FIFO or a dangling link is not a file to read.
        raise NotDicom(f"{source.path} is not a regular file")
    if is_dicomdir(source.path):  # a media index: skipped in a folder, like `import` does
        raise NotDicom(f"{source.path} is a DICOMDIR (media index), not an instance")
    return deidentify(
        source.path, keys, options, allow_burned_in=allow_burned_in, name=source.label
    )


# -- publishing ------------------------------------------------------------------------


def output_folder_ready(folder: Path, *, force: bool) -> None:
    """Check ``--out DIR``: created when missing; a non-empty folder only with ``force``.

    Raises
    ------
    ConfigError
        ``folder`` is a file, or is not empty and ``force`` is false.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if not force and any(folder.iterdir()):
        raise ConfigError(
            f"{folder} is not empty (--force adds the new files to it; nothing is replaced)"
        )


def publish(staging: Staging, folder: Path) -> list[Path]:
    """Move the staged files into ``folder`` (same filesystem: one rename each), named
    after the highest ``IMGnnnnn.dcm`` already there: nothing is replaced."""
    numbers = [int(m[1]) for p in folder.iterdir() if (m := _OUTPUT_NAME.match(p.name))]
    start = max(numbers, default=0)
    written: list[Path] = []
    for offset, item in enumerate(staging.staged, start=1):
        target = folder / f"IMG{start + offset:05d}.dcm"
        os.rename(item.path, target)
        written.append(target)
    return written


def staging_folder(parent: Path | None = None) -> tempfile.TemporaryDirectory[str]:
    """A staging folder, removed with whatever it still holds when the ``with`` ends (in
    ``parent`` for an output folder, so that publishing is a rename)."""
    return tempfile.TemporaryDirectory(
        prefix=".dicomvault-anonymize-", dir=None if parent is None else str(parent)
    )


def store_staged(
    archive: Archive, staging: Staging, *, on_done: Callable[[StoreResult], None] | None = None
) -> list[StoreResult]:
    """Store every staged file in the archive (:meth:`Archive.store_file`: indexed like any
    instance). If one fails, the instances this call added are deleted again and the
    error is raised: no partial study is left.
    """
    results: list[StoreResult] = []
    try:
        for item in staging.staged:
            result = archive.store_file(item.path)
            results.append(result)
            if on_done is not None:
                on_done(result)
    except BaseException:
        added = [r.sop_instance_uid for r in results if r.status is StoreStatus.STORED]
        with contextlib.suppress(Exception):  # the original error is the one to report
            archive.delete_instances(added, force=True)
        raise
    return results
