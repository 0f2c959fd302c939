"""``dicomvault find``, ``move`` and ``get``: Query/Retrieve SCU (PS3.4 C.4).

Keys are ``-k Keyword=value`` (or ``-k Keyword`` for a return key, ``-k gggg,eeee=value``);
the Identifier is encoded in the transfer syntax the peer accepted. ``find`` prints a
table, DICOM JSON (``--json``, PS3.18 F.2, one array) or CSV; ``move`` and ``get`` show
a progress bar from the pending responses' sub-operation counts and exit 1 when any
sub-operation failed or the final status is a failure.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dicomvault.cli.common import config_options, console, load_cli_settings, out
from dicomvault.cli.net_commands import resolve_target, target_tls, tls_option
from dicomvault.config import Settings
from dicomvault.net import (
    DEFAULT_TRANSFER_SYNTAXES,
    STORAGE_SOP_CLASSES,
    NetError,
    RoleSelection,
    ServiceRegistry,
    associate,
)
from dicomvault.net.handlers import DataSink, Response, StoreHandler, StoreRequest
from dicomvault.net.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    uid_name,
)

#: (model, operation) -> SOP class (PS3.4 C.6.1.1, C.6.2.1).
SOP_CLASS = {
    ("patient", "find"): PATIENT_ROOT_FIND,
    ("patient", "move"): PATIENT_ROOT_MOVE,
    ("patient", "get"): PATIENT_ROOT_GET,
    ("study", "find"): STUDY_ROOT_FIND,
    ("study", "move"): STUDY_ROOT_MOVE,
    ("study", "get"): STUDY_ROOT_GET,
}
_SYNTAXES = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]


def build_identifier(keys: tuple[str, ...], level: str) -> Dataset:
    """The Identifier of ``-k`` options (PS3.4 C.4.1.1.3): Query/Retrieve Level first.

    Raises
    ------
    click.BadParameter
        An unknown keyword or a malformed tag.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in keys:
        name, _, value = key.partition("=")
        name = name.strip()
        if "," in name:
            try:
                group, element = (int(part, 16) for part in name.split(","))
            except ValueError:
                raise click.BadParameter(f"bad tag {name!r}", param_hint="-k") from None
            tag = Tag(group, element)
        else:
            found = tag_for_keyword(name)
            if found is None:
                raise click.BadParameter(f"unknown keyword {name!r}", param_hint="-k")
            tag = Tag(found)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            raise click.BadParameter(f"unknown tag {name!r}", param_hint="-k") from None
        if vr == "SQ":
            ds.add_new(tag, vr, [])
        else:
            ds.add_new(tag, vr, value or None)
    return ds


def encode_identifier(ds: Dataset, syntax: str) -> bytes:
    """``ds`` encoded in ``syntax`` (PS3.5 7)."""
    fp = DicomBytesIO()
    fp.is_little_endian = syntax != EXPLICIT_VR_BIG_ENDIAN
    fp.is_implicit_VR = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def decode_identifier(data: bytes, syntax: str) -> Dataset:
    """A response Identifier as a pydicom Dataset."""
    return read_dataset(
        io.BytesIO(data),
        syntax == IMPLICIT_VR_LITTLE_ENDIAN,
        syntax != EXPLICIT_VR_BIG_ENDIAN,
    )


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    try:
        return load_cli_settings(config, data_dir)
    except Exception as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


def _fail(message: str) -> None:
    console.print(f"[bold red]{message}[/]", highlight=False)
    sys.exit(1)


_common = [
    click.argument("target"),
    click.option("-k", "--key", "keys", multiple=True, help="Keyword=value (repeatable)."),
    click.option(
        "--level",
        type=click.Choice(["PATIENT", "STUDY", "SERIES", "IMAGE"], case_sensitive=False),
        default="STUDY",
        show_default=True,
        help="Query/Retrieve Level (0008,0052).",
    ),
    click.option(
        "--model",
        type=click.Choice(["study", "patient"]),
        default="study",
        show_default=True,
        help="Study Root or Patient Root information model.",
    ),
    click.option("--calling-ae", default=None, help="Our AE title [default: dicom.ae_title]."),
    click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds."),
    config_options,
    tls_option,
]


def _qr_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(_common):
        func = decorator(func)
    return func


@click.command("find")
@_qr_options
@click.option("--json", "as_json", is_flag=True, help="DICOM JSON (PS3.18 F.2), one array.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per match.")
@click.option("--relational", is_flag=True, help="Propose relational queries (PS3.4 C.5.1).")
def find_command(
    target: str,
    keys: tuple[str, ...],
    level: str,
    model: str,
    calling_ae: str | None,
    timeout: float,
    config: Path | None,
    data_dir: Path | None,
    use_tls: bool,
    as_json: bool,
    as_csv: bool,
    relational: bool,
) -> None:
    """C-FIND at TARGET (AET@HOST:PORT or a remote's name) and print the matches."""
    settings = _settings(config, data_dir)
    aet, host, port = resolve_target(target, settings)
    tls = target_tls(target, settings, use_tls)
    sop_class = SOP_CLASS[(model, "find")]
    query = build_identifier(keys, level.upper())

    async def run() -> tuple[list[Dataset], Response | None]:
        matches: list[Dataset] = []
        final: Response | None = None
        async with associate(
            host,
            port,
            called_ae=aet,
            calling_ae=calling_ae or settings.dicom.ae_title,
            contexts=[(sop_class, _SYNTAXES)],
            extended_negotiation={sop_class: b"\x01"} if relational else None,
            timeout=timeout,
            ssl=tls,
        ) as assoc:
            ctx = assoc.find_context(sop_class)
            if ctx is None:
                raise NetError(f"{uid_name(sop_class)} was not accepted")
            async for response in assoc.find(
                sop_class, encode_identifier(query, ctx.transfer_syntax)
            ):
                if response.pending and response.identifier is not None:
                    matches.append(decode_identifier(response.identifier, ctx.transfer_syntax))
                elif not response.pending:
                    final = response
        return matches, final

    try:
        matches, final = asyncio.run(run())
    except (NetError, OSError, TimeoutError) as exc:
        _fail(f"find failed: {aet}@{host}:{port}: {exc or type(exc).__name__}")
        return
    columns = [_column(key) for key in keys]
    if as_json:
        out.print_json(json.dumps([m.to_json_dict() for m in matches]))
    elif as_csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for match in matches:
            writer.writerow([_text(match, column) for column in columns])
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(title=f"{len(matches)} match(es) at {level.upper()} level")
        for column in columns:
            table.add_column(column, overflow="fold")
        for match in matches:
            table.add_row(*(_text(match, column) for column in columns))
        out.print(table)
    status = final.status if final is not None else None
    if status is None or status.category != "success":
        code = f"0x{status.status:04X}" if status else "none"
        comment = f" ({status.error_comment})" if status and status.error_comment else ""
        _fail(f"find ended with status {code}{comment}")


def _column(key: str) -> str:
    """The keyword of a ``-k`` option, in the order given."""
    name = key.partition("=")[0].strip()
    if "," in name:
        group, element = (int(part, 16) for part in name.split(","))
        return keyword_for_tag(Tag(group, element)) or name
    return name


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword) if not keyword.startswith("(") else None
    if value is None or value == "":
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def storage_contexts(limit: int = 127) -> list[tuple[str, list[str]]]:
    """Storage SOP classes a C-GET SCU proposes with the SCP role (PS3.4 C.4.3.1): image
    classes first, then SR, presentation states, RT, segmentations, documents; at most
    ``limit`` (128 contexts in all, PS3.8 9.3.2.2)."""
    from pydicom._uid_dict import UID_dictionary

    def rank(uid: str) -> int:
        name = UID_dictionary[uid][0]
        if "Image Storage" in name:
            return 0
        if any(
            word in name
            for word in ("SR", "Presentation", "RT ", "Segmentation", "Encapsulated", "Key Object")
        ):
            return 1
        return 2

    current = [uid for uid in STORAGE_SOP_CLASSES if UID_dictionary[uid][3] != "Retired"]
    chosen = sorted(current, key=rank)[:limit]
    return [(uid, list(DEFAULT_TRANSFER_SYNTAXES)) for uid in chosen]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _report(operation: str, final: Response | None, elapsed: float, *, as_json: bool) -> None:
    """The final C-MOVE / C-GET response: a table, or (``as_json``) one JSON object;
    exit 1 unless it succeeded (with or without warnings) and no sub-operation failed."""
    if final is None:
        _fail(f"{operation}: no final response")
        return
    status = final.status
    failed = final.identifier.decode("ascii", "replace").split("\\") if final.identifier else []
    if as_json:
        click.echo(
            json.dumps(
                {
                    "operation": operation,
                    "status": f"0x{status.status:04X}",
                    "error_comment": status.error_comment,
                    "completed": final.completed or 0,
                    "warning": final.warning or 0,
                    "failed": final.failed or 0,
                    # Failed SOP Instance UID List (0008,0058), PS3.4 C.4.2.1.4
                    "failed_sop_instance_uids": failed,
                    "seconds": round(elapsed, 3),
                }
            )
        )
        if status.category not in ("success", "warning") or final.failed:
            sys.exit(1)
        return
    table = Table(show_edge=False)
    table.add_column("sub-operations")
    table.add_column("count", justify="right")
    table.add_row("completed", str(final.completed or 0))
    table.add_row("warning", str(final.warning or 0))
    table.add_row("failed", str(final.failed or 0))
    out.print(table)
    comment = f" ({status.error_comment})" if status.error_comment else ""
    out.print(f"{operation}: status 0x{status.status:04X}{comment} in {elapsed:.1f} s")
    for uid in failed[:100]:
        out.print(f"failed: {uid}", highlight=False)
    if len(failed) > 100:
        out.print(f"... and {len(failed) - 100} more", highlight=False)
    if status.category not in ("success", "warning") or final.failed:
        sys.exit(1)


class _Received:
    """A C-GET's store handler that counts the instances coming in: the progress between
    pending responses, which a server may send seldom or never (PS3.4 C.4.3.3.1)."""

    def __init__(self, handler: StoreHandler) -> None:
        self.handler = handler
        self.count = 0
        self.on_count: Callable[[int], None] | None = None

    def begin_store(self, request: StoreRequest) -> DataSink:
        self.count += 1
        if self.on_count is not None:
            self.on_count(self.count)
        return self.handler.begin_store(request)


async def _retrieve(
    stream_of: Callable[[Any, bytes], Any],
    assoc: Any,
    sop_class: str,
    query: Dataset,
    received: _Received | None = None,
) -> Response | None:
    ctx = assoc.find_context(sop_class)
    if ctx is None:
        raise NetError(f"{uid_name(sop_class)} was not accepted")
    final: Response | None = None
    progress = _progress()
    task = progress.add_task(stream_of.__name__, total=None)
    if received is not None:
        received.on_count = lambda count: progress.update(task, completed=count)
    with progress:
        async for response in stream_of(assoc, encode_identifier(query, ctx.transfer_syntax)):
            done = (response.completed or 0) + (response.failed or 0) + (response.warning or 0)
            if response.remaining is not None:
                progress.update(task, total=done + response.remaining, completed=done)
            if not response.pending:
                final = response
    if final is not None and final.identifier:
        failed = decode_identifier(final.identifier, ctx.transfer_syntax)
        uids = failed.get("FailedSOPInstanceUIDList", [])
        final.identifier = "\\".join([uids] if isinstance(uids, str) else uids).encode()
    return final


@click.command("move")
@_qr_options
@click.option("--dest", required=True, help="Move Destination AE title (0000,0600).")
@click.option("--json", "as_json", is_flag=True, help="Print the final response as JSON.")
def move_command(
    target: str,
    keys: tuple[str, ...],
    level: str,
    model: str,
    calling_ae: str | None,
    timeout: float,
    config: Path | None,
    data_dir: Path | None,
    use_tls: bool,
    dest: str,
    as_json: bool,
) -> None:
    """C-MOVE from TARGET to the AE titled --dest (known to TARGET)."""
    settings = _settings(config, data_dir)
    aet, host, port = resolve_target(target, settings)
    tls = target_tls(target, settings, use_tls)
    sop_class = SOP_CLASS[(model, "move")]
    query = build_identifier(keys, level.upper())

    def move(assoc: Any, identifier: bytes) -> Any:
        return assoc.move(sop_class, identifier, dest)

    async def run() -> Response | None:
        async with associate(
            host,
            port,
            called_ae=aet,
            calling_ae=calling_ae or settings.dicom.ae_title,
            contexts=[(sop_class, _SYNTAXES)],
            timeout=timeout,
            ssl=tls,
        ) as assoc:
            return await _retrieve(move, assoc, sop_class, query)

    started = time.perf_counter()
    try:
        final = asyncio.run(run())
    except (NetError, OSError, TimeoutError) as exc:
        _fail(f"move failed: {aet}@{host}:{port}: {exc or type(exc).__name__}")
        return
    _report(f"C-MOVE to {dest}", final, time.perf_counter() - started, as_json=as_json)


@click.command("get")
@_qr_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write received instances here as Part 10 files; without it they go into the "
    "local archive (--data-dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final response as JSON.")
def get_command(
    target: str,
    keys: tuple[str, ...],
    level: str,
    model: str,
    calling_ae: str | None,
    timeout: float,
    config: Path | None,
    data_dir: Path | None,
    use_tls: bool,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """C-GET from TARGET: the instances arrive on the same association."""
    settings = _settings(config, data_dir)
    aet, host, port = resolve_target(target, settings)
    tls = target_tls(target, settings, use_tls)
    sop_class = SOP_CLASS[(model, "get")]
    query = build_identifier(keys, level.upper())
    storage = storage_contexts()
    registry = ServiceRegistry()
    archive = None
    handler: StoreHandler
    if out_dir is not None:
        from dicomvault.dimse.folder import FolderStoreHandler

        out_dir.mkdir(parents=True, exist_ok=True)
        handler = FolderStoreHandler(out_dir)
    else:
        from dicomvault.archive import Archive
        from dicomvault.dimse.store import ArchiveStoreHandler

        archive = Archive.open(settings)
        handler = ArchiveStoreHandler(archive)
    received = _Received(handler)
    registry.add_store(received)

    def get(assoc: Any, identifier: bytes) -> Any:
        return assoc.get(sop_class, identifier)

    async def run() -> Response | None:
        async with associate(
            host,
            port,
            called_ae=aet,
            calling_ae=calling_ae or settings.dicom.ae_title,
            contexts=[(sop_class, _SYNTAXES), *storage],
            roles=[RoleSelection(uid, False, True) for uid, _ in storage],
            registry=registry,
            timeout=timeout,
            ssl=tls,
        ) as assoc:
            return await _retrieve(get, assoc, sop_class, query, received)

    started = time.perf_counter()
    try:
        final = asyncio.run(run())
    except (NetError, OSError, TimeoutError) as exc:
        _fail(f"get failed: {aet}@{host}:{port}: {exc or type(exc).__name__}")
        return
    finally:
        if archive is not None:
            archive.close()
    _report("C-GET", final, time.perf_counter() - started, as_json=as_json)


__all__ = ["find_command", "get_command", "move_command"]
