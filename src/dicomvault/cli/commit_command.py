"""``dicomvault commit``: Storage Commitment Push Model SCU (PS3.4 J.3) — ask another
archive to commit to instances (files, or a study of the local archive) and wait for its
report."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from dicomvault.archive import Archive
from dicomvault.cli.common import config_options, console, load_cli_settings, out
from dicomvault.cli.net_commands import _describe, resolve_target, target_tls, tls_option
from dicomvault.dicom.commitment import CommitmentResult, Reference
from dicomvault.dimse.commitment_scu import CommitmentRefused, request_commitment
from dicomvault.model.errors import DicomVaultError
from dicomvault.net import NetError
from dicomvault.net.fileio import NotDicomFile, read_file_info
from dicomvault.net.sender import collect_files

#: Failure Reason (0008,1197) meanings (PS3.4 J.3.3.1.1.1).
REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class / instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


def _from_files(paths: tuple[Path, ...]) -> list[Reference]:
    refs = []
    for path in collect_files(paths):
        try:
            info = read_file_info(path)
        except (NotDicomFile, OSError) as exc:
            console.print(f"[yellow]skipped[/] {path}: {exc}", highlight=False)
            continue
        refs.append(Reference(info.sop_class_uid, info.sop_instance_uid))
    return refs


def _from_study(archive: Archive, study_uid: str) -> list[Reference]:
    uids = archive.index.instance_uids(study_instance_uid=study_uid)
    if not uids:
        raise DicomVaultError(f"no study {study_uid} in the local archive")
    return [Reference(archive.get_instance(u).sop_class_uid, u) for u in uids]


def _print(result: CommitmentResult, as_json: bool) -> None:
    if as_json:
        failed = [
            {"sop_instance_uid": r.sop_instance_uid, "sop_class_uid": r.sop_class_uid,
             "failure_reason": f"0x{reason:04X}"}
            for r, reason in result.failed
        ]  # fmt: skip
        document = {
            "transaction_uid": result.transaction_uid,
            "event_type_id": result.event_type_id,
            "retrieve_ae_title": result.retrieve_ae_title,
            "committed": [r.sop_instance_uid for r in result.committed],
            "failed": failed,
        }
        out.print_json(json.dumps(document))
        return
    out.print(
        f"Storage commitment {result.transaction_uid}: {len(result.committed)} committed, "
        f"{len(result.failed)} failed",
        highlight=False,
    )
    for ref, reason in result.failed:
        # One line per instance, never wrapped: UIDs stay whole for copy and paste.
        out.print(
            f"failed: {ref.sop_instance_uid}: 0x{reason:04X} {REASONS.get(reason, '')}".rstrip(),
            soft_wrap=True,
            highlight=False,
        )


@click.command("commit")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "target", required=True, help="AET@HOST:PORT or a remote's name.")
@click.option("--study", "study_uid", default=None, help="A study of the local archive.")
@click.option("--calling-ae", default=None, help="Our AE title [default: setting dicom.ae_title].")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the report.")  # fmt: skip
@click.option(
    "--listen-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Also accept the report on a new association to this port (for SCPs that report "
    "that way; the remote must know us at this port).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@config_options
@tls_option
def commit_command(
    paths: tuple[Path, ...],
    target: str,
    study_uid: str | None,
    calling_ae: str | None,
    timeout: float,
    listen_port: int | None,
    as_json: bool,
    config: Path | None,
    data_dir: Path | None,
    use_tls: bool,
) -> None:
    """Ask TARGET to commit to storing PATHS (files/folders) or --study UID, and wait for
    its report. Exit 0: all committed; 1: some failed; 2: no answer or refused."""
    if bool(paths) == bool(study_uid):
        console.print("[bold red]error:[/] give PATHS or --study, not both or neither")
        sys.exit(2)
    try:
        settings = load_cli_settings(config, data_dir)
        if study_uid:
            with Archive.open(settings, create=False) as archive:
                refs = _from_study(archive, study_uid)
        else:
            refs = _from_files(paths)
    except DicomVaultError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    if not refs:
        console.print("[bold red]error:[/] no DICOM instances to commit", highlight=False)
        sys.exit(2)
    aet, host, port = resolve_target(target, settings)
    tls = target_tls(target, settings, use_tls)
    calling = calling_ae or settings.dicom.ae_title
    with console.status(f"waiting for the commitment report of {aet} ({len(refs)} instances)"):
        try:
            result = asyncio.run(
                request_commitment(
                    host,
                    port,
                    refs,
                    called_ae=aet,
                    calling_ae=calling,
                    timeout=timeout,
                    listen_port=listen_port,
                    ssl=tls,
                    max_pdu=settings.dicom.max_pdu,
                )
            )
        except CommitmentRefused as exc:
            console.print(f"[bold red]commit refused:[/] {exc}", highlight=False)
            sys.exit(2)
        except (NetError, OSError, TimeoutError) as exc:
            console.print(
                f"[bold red]commit failed:[/] {aet}@{host}:{port}: {_describe(exc)}",
                highlight=False,
            )
            sys.exit(2)
    _print(result, as_json)
    sys.exit(1 if result.failed else 0)
