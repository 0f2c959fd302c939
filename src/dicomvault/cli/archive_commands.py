"""``import``, ``verify``, ``stats``, ``db``, ``config``: commands on the archive itself."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dicomvault.archive import Archive, audit, ready_data_dir
from dicomvault.archive.importer import ImportReport, import_paths
from dicomvault.cli.common import (
    config_options,
    console,
    fail,
    human_bytes,
    load_cli_settings,
    out,
    run_guarded,
)
from dicomvault.index import Index, migrate


def _print_import_summary(report: ImportReport, seconds: float) -> None:
    done = report.stored + report.duplicate + report.overwritten + report.kept_first
    rate = done / seconds if seconds > 0 else 0.0
    table = Table(title="import summary", show_header=True, title_justify="left")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("stored", str(report.stored))
    table.add_row("duplicate (identical, nothing written)", str(report.duplicate))
    if report.overwritten:
        table.add_row("overwritten (same UID, new content)", str(report.overwritten))
    if report.kept_first:
        table.add_row("kept first (same UID, new content ignored)", str(report.kept_first))
    table.add_row("rejected", str(len(report.rejected)))
    table.add_row("failed", str(len(report.failed)))
    table.add_row("not DICOM (skipped)", str(report.not_dicom))
    if report.dicomdir:
        table.add_row("DICOMDIR (media index, not stored)", str(report.dicomdir))
    if report.not_attempted:
        table.add_row("not attempted (import stopped)", str(report.not_attempted))
    console.print(table)
    console.print(
        f"{done} instances, {human_bytes(report.bytes)} in {seconds:.1f} s "
        f"({rate:.0f} instances/s, {report.bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)"
    )
    for source, reason in report.rejected[:50]:
        console.print(f"[red]rejected[/] {source}: {reason}", highlight=False)
    if len(report.rejected) > 50:
        console.print(f"… and {len(report.rejected) - 50} more rejected")
    for source, reason in report.failed[:50]:
        console.print(f"[red]failed[/] {source}: {reason}", highlight=False)
    for source, warning in report.warnings[:20]:
        console.print(f"[yellow]warning[/] {source}: {warning}", highlight=False)
    if report.stopped:
        console.print(f"[bold red]import stopped:[/] {report.stopped}", highlight=False)


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@config_options
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Parallel workers [default: 2 per core].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def import_command(
    paths: tuple[Path, ...],
    config: Path | None,
    data_dir: Path | None,
    workers: int | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Import DICOM files from folders (recursively), zip files and DICOMDIR media.

    Exit status: 0 when everything was stored (or was a duplicate), 1 when anything was
    rejected or failed, 2 on a usage or configuration error.
    """

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        start = time.perf_counter()
        with Archive.open(settings) as archive:
            progress = Progress(
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} files/s"),
                TimeElapsedColumn(),
                console=console,
                disable=no_progress or as_json,
                transient=True,
            )
            with progress:
                task = progress.add_task("import", total=0, rate="0")
                counted = [0]

                def discovered(n: int) -> None:
                    counted[0] += n
                    progress.update(task, total=counted[0])

                # Data Import (PS3.15 A.5.3.5): tallied per study in memory, one message
                # per study recorded when the import ends (never per file).
                tally, tally_done = audit.import_tally()

                def done(source: object, outcome: object) -> None:
                    tally_done(outcome)
                    elapsed = time.perf_counter() - start
                    completed = progress.tasks[0].completed + 1
                    progress.update(task, advance=1, rate=f"{completed / max(elapsed, 1e-9):.0f}")

                try:
                    report = import_paths(
                        archive,
                        list(paths),
                        workers=workers,
                        on_discovered=discovered,
                        on_done=done,
                    )
                except FileNotFoundError as exc:
                    fail(str(exc), 2)
            audit.imported(
                archive, tally, user=audit.os_user(),
                media=", ".join(str(p.resolve()) for p in paths),
                failed=len(report.failed) + len(report.rejected),
            )  # fmt: skip
            audit.close_trail(archive)
        seconds = time.perf_counter() - start
        if as_json:
            out.print_json(json.dumps({**report.as_dict(), "seconds": round(seconds, 3)}))
        else:
            _print_import_summary(report, seconds)
        return 0 if report.ok else 1

    run_guarded(body)


@click.command("verify")
@config_options
@click.option("--repair", is_flag=True, help="Remove orphan blobs (stored but never indexed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(config: Path | None, data_dir: Path | None, repair: bool, as_json: bool) -> None:
    """Re-hash every stored blob against the index; report missing, corrupt and orphan files.

    Exit status 0 when consistent, 1 otherwise.
    """

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        with Archive.open(settings, recover_on_start=False, create=False) as archive:
            total = archive.stats().instances
            with Progress(
                TextColumn("verifying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                disable=as_json,
                transient=True,
            ) as progress:
                task = progress.add_task("verify", total=total)
                report = archive.verify(
                    repair=repair, progress=lambda n: progress.update(task, advance=n)
                )
        if as_json:
            out.print_json(
                json.dumps(
                    {
                        "checked": report.checked,
                        "ok": report.ok,
                        "missing": report.missing,
                        "corrupt": report.corrupt,
                        "orphans": report.orphans,
                        "removed_orphans": report.removed_orphans,
                        "removed_temp": report.removed_temp,
                        "consistent": report.consistent,
                    }
                )
            )
        else:
            console.print(
                f"checked {report.checked} instances: {report.ok} ok, "
                f"{len(report.missing)} missing, {len(report.corrupt)} corrupt, "
                f"{len(report.orphans)} orphan blobs"
                + (f" ({report.removed_orphans} removed)" if repair else "")
            )
            for uid in report.missing:
                console.print(f"[red]missing[/] {uid}", highlight=False)
            for uid in report.corrupt:
                console.print(f"[red]corrupt[/] {uid}", highlight=False)
            if report.orphans and not repair:
                console.print("orphan blobs can be removed with 'dicomvault verify --repair'")
            console.print("consistent" if report.consistent else "[bold red]NOT consistent[/]")
        return 0 if report.consistent else 1

    run_guarded(body)


@click.command("stats")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print counts as JSON for programs.")
def stats_command(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Counts and bytes per level (patients, studies, series, instances)."""

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        index = Index.open(settings.index_url, create=False)
        try:
            stats = index.stats()
            per_modality = index.level_stats()
        finally:
            index.close()
        if as_json:
            out.print_json(
                json.dumps(
                    {
                        "patients": stats.patients,
                        "studies": stats.studies,
                        "series": stats.series,
                        "instances": stats.instances,
                        "bytes": stats.bytes,
                    }
                )
            )
            return 0
        table = Table(title=f"archive {settings.storage.path}", title_justify="left")
        for col in ("patients", "studies", "series", "instances", "bytes"):
            table.add_column(col, justify="right")
        table.add_row(
            str(stats.patients),
            str(stats.studies),
            str(stats.series),
            str(stats.instances),
            human_bytes(stats.bytes),
        )
        out.print(table)
        if per_modality:
            table = Table(title="per modality", title_justify="left")
            for col in ("modality", "studies", "instances", "bytes"):
                table.add_column(col, justify="right" if col != "modality" else "left")
            for modality, n_studies, n_instances, size in per_modality:
                table.add_row(modality, str(n_studies), str(n_instances), human_bytes(size))
            out.print(table)
        return 0

    run_guarded(body)


@click.group("db")
def db_group() -> None:
    """Index database maintenance."""


@db_group.command("upgrade")
@config_options
def db_upgrade(config: Path | None, data_dir: Path | None) -> None:
    """Run the index migrations up to this version's schema."""

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        if settings.index_url.startswith("sqlite"):
            ready_data_dir(settings, create=True)
        index = Index(settings.index_url)
        try:
            before = migrate.current_revision(index._write)
            migrate.upgrade(index._write)
            after = migrate.current_revision(index._write)
        finally:
            index.close()
        console.print(
            f"index at revision {after}"
            + (" (already up to date)" if before == after else f" (was {before})")
        )
        return 0

    run_guarded(body)


@db_group.command("current")
@config_options
def db_current(config: Path | None, data_dir: Path | None) -> None:
    """Print the index schema revision and the one this version needs."""

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        index = Index(settings.index_url)
        try:
            current = migrate.current_revision(index._write)
        finally:
            index.close()
        out.print(f"current: {current}\nhead:    {migrate.head_revision()}")
        return 0

    run_guarded(body)


@click.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("show")
@config_options
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML-like text.")
def config_show(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Print the effective configuration (defaults, file, environment, options)."""

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        data = settings.model_dump(mode="json")
        if as_json:
            out.print_json(json.dumps(data))
            return 0
        for section, values in data.items():
            tables = values.items() if section == "remotes" else [(None, values)]
            for name, table in tables:
                click.echo(f"[{section}.{name}]" if name else f"[{section}]")
                for key, value in table.items():
                    click.echo(f"{key} = {json.dumps(value)}")
                click.echo()
        return 0

    run_guarded(body)
