"""``dicomvault echo`` and ``dicomvault store``: Verification and Storage SCU (PS3.4 A, B)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dicomvault.archive.remotes import get_remote
from dicomvault.cli.common import load_cli_settings
from dicomvault.config import RemoteAE, Settings
from dicomvault.index import Index
from dicomvault.model.errors import ConfigError, DicomVaultError, NotFound
from dicomvault.net import AssociationAborted, AssociationRejected, NetError, associate
from dicomvault.net.sender import SendResult, collect_files, send_files
from dicomvault.net.uids import VERIFICATION
from dicomvault.security.tls import client_context, describe_tls_error

_TARGET = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")

_err = Console(stderr=True)
_out = Console()


def remote_named(name: str, settings: Settings) -> RemoteAE | None:
    """The ``[remotes.NAME]`` entry of the file, else one managed over the admin API
    (``/api/remotes``, ``dicomvault remote add``) in the index of ``storage.path`` /
    ``index.url`` — read only, and only when that index exists."""
    remote = settings.remotes.get(name)
    if remote is not None:
        return remote
    if not settings.index.url and not (settings.storage.path / "index.sqlite3").exists():
        return None
    try:
        index = Index.open(settings.index_url, create=False)
    except DicomVaultError:  # outdated or unreachable: the file's remotes only
        return None
    try:
        return get_remote((settings, index), name).remote
    except NotFound:
        return None
    finally:
        index.close()


def resolve_target(target: str, settings: Settings) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` or the name of a remote AE (:func:`remote_named`) -> (AE title,
    host, port)."""
    match = _TARGET.match(target)
    if match:
        host = match["host"].strip("[]")
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise click.BadParameter(f"port {port} is out of range", param_hint="TARGET")
        return match["aet"].strip(), host, port
    remote = remote_named(target, settings)
    if remote is None:
        known = ", ".join(sorted(settings.remotes)) or "none configured"
        raise click.BadParameter(
            f"{target!r} is neither AET@HOST:PORT nor a known remote ({known})",
            param_hint="TARGET",
        )
    return remote.ae_title, remote.host, remote.port


def target_tls(target: str, settings: Settings, tls: bool) -> ssl.SSLContext | None:
    """The TLS client context for TARGET (PS3.15 B.12), or ``None`` for plain TCP.

    TLS is used when TARGET names a ``[remotes.NAME]`` entry with ``tls = true``, or when
    ``--tls`` is given (for ``AET@HOST:PORT``); the remote is verified against
    ``tls.ca_certificates`` and we present ``tls.certificate`` / ``tls.private_key``.
    A TLS file that cannot be used is a message naming it and exit 2.
    """
    remote = None if _TARGET.match(target) else remote_named(target, settings)
    if not tls and (remote is None or not remote.tls):
        return None
    try:
        return client_context(settings.tls)
    except ConfigError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


tls_option = click.option(
    "--tls",
    "use_tls",
    is_flag=True,
    help="Associate over TLS (PS3.15 B.12) using tls.ca_certificates, tls.certificate and "
    "tls.private_key; automatic for a remote configured with tls = true.",
)


def _settings(config: Path | None) -> Settings:
    try:
        return load_cli_settings(config, None)
    except Exception as exc:  # ConfigError and friends: one line, exit 2
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {describe_tls_error(exc)}"
    if isinstance(exc, AssociationRejected):
        return (
            f"association rejected (result {exc.result}, source {exc.source}, reason {exc.reason})"
        )
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


_config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="DICOMVAULT_CONFIG",
    help="TOML configuration file (for [remotes] and the default calling AE title).",
)


@click.command("echo")
@click.argument("target")
@click.option("--calling-ae", default=None, help="Our AE title [default: setting dicom.ae_title].")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
@_config_option
@tls_option
def echo_command(
    target: str, calling_ae: str | None, timeout: float, config: Path | None, use_tls: bool
) -> None:
    """C-ECHO (Verification) to TARGET: AET@HOST:PORT or a remote's name."""
    settings = _settings(config)
    aet, host, port = resolve_target(target, settings)
    tls = target_tls(target, settings, use_tls)
    calling = calling_ae or settings.dicom.ae_title

    async def run() -> tuple[int, float]:
        started = time.perf_counter()
        async with associate(
            host,
            port,
            called_ae=aet,
            calling_ae=calling,
            contexts=[VERIFICATION],
            timeout=timeout,
            ssl=tls,
        ) as assoc:
            status = await assoc.echo()
        return status.status, time.perf_counter() - started

    try:
        code, seconds = asyncio.run(run())
    except (NetError, OSError, TimeoutError) as exc:
        _err.print(
            f"[bold red]echo failed:[/] {aet}@{host}:{port}: {_describe(exc)}", highlight=False
        )
        sys.exit(1)
    if code != 0:
        _err.print(f"[bold red]echo failed:[/] status 0x{code:04X}", highlight=False)
        sys.exit(1)
    over = " over TLS" if tls is not None else ""
    _out.print(
        f"C-ECHO {aet}@{host}:{port}{over}: success ({seconds * 1000:.1f} ms)", highlight=False
    )


def _store_report(
    target: str, results: list[SendResult], counts: dict[str, int], seconds: float
) -> dict[str, object]:
    """``store --json``: the totals and one entry per file, in the order sent."""
    return {
        "target": target,
        "sent": counts["sent"],
        "warnings": counts["warning"],
        "failed": counts["failed"],
        "bytes": sum(r.size for r in results if r.outcome != "failed"),
        "seconds": round(seconds, 3),
        "files": [
            {
                "path": str(r.path),
                "outcome": r.outcome,
                "status": None if r.status is None else f"0x{r.status.status:04X}",
                "reason": r.reason if r.outcome != "sent" else None,
            }
            for r in results
        ],
    }


@click.command("store")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "target", required=True, help="AET@HOST:PORT or a remote's name.")
@click.option("--calling-ae", default=None, help="Our AE title [default: setting dicom.ae_title].")
@click.option(
    "--associations",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Parallel associations.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON (every file) on stdout."
)
@_config_option
@tls_option
def store_command(
    paths: tuple[Path, ...],
    target: str,
    calling_ae: str | None,
    associations: int,
    timeout: float,
    as_json: bool,
    config: Path | None,
    use_tls: bool,
) -> None:
    """C-STORE files and folders (recursively) to a Storage SCP, each file as stored.

    Exit status 0 when every file was stored (with or without a warning), 1 otherwise."""
    settings = _settings(config)
    aet, host, port = resolve_target(target, settings)
    tls = target_tls(target, settings, use_tls)
    calling = calling_ae or settings.dicom.ae_title
    total = len(collect_files(paths))
    progress = Progress(
        TextColumn("[bold]store[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
        disable=not _err.is_terminal,
    )
    task = progress.add_task("store", total=total)

    def advance(_: SendResult) -> None:
        progress.advance(task)

    started = time.perf_counter()
    with progress:
        try:
            results = asyncio.run(
                send_files(
                    paths,
                    host,
                    port,
                    called_ae=aet,
                    calling_ae=calling,
                    associations=associations,
                    timeout=timeout,
                    on_result=advance,
                    ssl=tls,
                )
            )
        except (AssociationAborted, NetError, OSError) as exc:
            _err.print(f"[bold red]store failed:[/] {_describe(exc)}", highlight=False)
            sys.exit(1)
    elapsed = time.perf_counter() - started
    counts = {"sent": 0, "warning": 0, "failed": 0}
    for result in results:
        counts[result.outcome] += 1
    if as_json:
        click.echo(json.dumps(_store_report(f"{aet}@{host}:{port}", results, counts, elapsed)))
        sys.exit(1 if counts["failed"] else 0)
    _out.print(f"C-STORE to {aet}@{host}:{port}", highlight=False)
    summary = Table(show_edge=False)
    summary.add_column("outcome")
    summary.add_column("files", justify="right")
    summary.add_row("sent", str(counts["sent"]))
    summary.add_row("warnings", str(counts["warning"]))
    summary.add_row("failed", str(counts["failed"]))
    _out.print(summary)
    problems = [r for r in results if r.outcome != "sent"]
    for result in problems[:100]:
        # One line per file, never wrapped: paths stay whole for copy and paste.
        _out.print(
            f"{result.outcome}: {result.path}: {result.reason}", soft_wrap=True, highlight=False
        )
    if len(problems) > 100:
        _out.print(f"... and {len(problems) - 100} more", highlight=False)
    size = sum(r.size for r in results if r.outcome != "failed")
    _out.print(f"{len(results)} file(s), {size / 1e6:.1f} MB in {elapsed:.1f} s", highlight=False)
    if counts["failed"]:
        sys.exit(1)
