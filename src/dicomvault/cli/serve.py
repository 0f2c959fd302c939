"""``dicomvault serve``: the DIMSE listener and the HTTP server (DICOMweb) on one event loop
in one process, or ``--workers N`` processes sharing both ports through SO_REUSEPORT so
every core works.

With ``tls.enabled`` a second DIMSE listener serves DICOM over TLS (PS3.15 B.12) on
``tls.dicom_port`` with the same services and policy; with ``tls.https`` the HTTP server
speaks HTTPS. The TLS files are checked before anything listens."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event as EventLike
from pathlib import Path
from typing import NamedTuple

import click

from dicomvault.archive import Archive, audit, ready_data_dir, users
from dicomvault.cli.common import config_options, load_cli_settings, run_guarded
from dicomvault.cli.services import background_services
from dicomvault.config import Settings
from dicomvault.dimse.server import serve_dicom
from dicomvault.index import Index
from dicomvault.model.digits import ascii_digits
from dicomvault.model.errors import ConfigError
from dicomvault.net.tls_listener import TlsAcceptor
from dicomvault.parent import stop_with_parent
from dicomvault.security.tls import reload_server_contexts, server_context
from dicomvault.web.auth import is_loopback
from dicomvault.web.http import refuse_if_exposed, serve_http

log = logging.getLogger("dicomvault.serve")


def _listening_socket(host: str, port: int, *, reuse_port: bool, what: str) -> socket.socket:
    """A bound, listening, non-blocking socket; ConfigError naming ``what`` (the setting)
    when the address cannot be had — most often a port another server holds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        hint = " (is another server running?)" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(
            f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}{hint}"
        ) from None
    sock.setblocking(False)
    return sock


class _Listeners(NamedTuple):
    dimse: socket.socket
    http: socket.socket
    tls: socket.socket | None


def _listening_sockets(settings: Settings, *, reuse_port: bool) -> _Listeners:
    """The DIMSE, HTTP and (``tls.enabled``) DICOM-over-TLS listeners of ``settings``;
    when one cannot be had, those opened before it are closed again."""
    host = settings.dicom.host
    wanted = [(host, settings.dicom.port, "dicom.port")]
    wanted.append((settings.http.host, settings.http.port, "http.port"))
    if settings.tls.enabled:
        wanted.append((host, settings.tls.dicom_port, "tls.dicom_port"))
    opened: list[socket.socket] = []
    try:
        for address, port, what in wanted:
            opened.append(_listening_socket(address, port, reuse_port=reuse_port, what=what))
    except ConfigError:
        for sock in opened:
            sock.close()
        raise
    return _Listeners(opened[0], opened[1], opened[2] if settings.tls.enabled else None)


@contextlib.contextmanager
def _worker_listeners(settings: Settings, n: int) -> Iterator[list[_Listeners]]:
    """Every worker's listeners, opened by the supervisor before any worker starts and
    closed in it at the end of the block (each started worker keeps its own copies).

    A worker opening its own once it had started (a spawned interpreter takes about a
    second to import) left the first one up alone in the SO_REUSEPORT group for that
    long, and the kernel gave it every connection made meanwhile: all four associations
    of a benchmark that began at the first C-ECHO answer, in 3 runs of 4. Opened
    together, the group is whole from the first connection, the kernel spreads
    connections over the workers by a hash of their addresses, and a connection for a
    worker still starting waits in that worker's backlog."""
    with contextlib.ExitStack() as opened:
        sockets: list[_Listeners] = []
        for _ in range(n):
            listeners = _listening_sockets(settings, reuse_port=True)
            opened.callback(_close, listeners)
            sockets.append(listeners)
        yield sockets


def _close(listeners: _Listeners) -> None:
    for sock in listeners:
        if sock is not None:
            sock.close()


def _refuse_if_exposed(settings: Settings) -> None:
    """ConfigError (exit 2) when HTTP would listen beyond loopback with no HTTP user."""
    if is_loopback(settings.http.host):
        return
    ready_data_dir(settings, create=True)
    index = Index.open(settings.index_url)
    try:
        refuse_if_exposed(settings.http.host, users.users_exist(index) or settings.jwt.enabled)
    finally:
        index.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _run_one(
    settings: Settings,
    sock: socket.socket,
    http_sock: socket.socket,
    worker: int,
    tls_sock: socket.socket | None = None,
    early_stop: list[int] | None = None,
) -> None:
    """One serving process: open the archive, serve DIMSE and HTTP until SIGTERM/SIGINT,
    close. ``early_stop`` holds the signals that arrived while the process was starting
    (a worker): the server then stops as soon as it can."""
    archive = Archive.open(settings, recover_on_start=worker == 0)
    # Application Activity, start (PS3.15 A.5.3.1), once per serving process.
    audit.application_activity(archive, started=True, launcher=_launcher())
    loop = _new_loop()
    stop = asyncio.Event()

    def on_sighup() -> None:
        """SIGHUP: reopen the audit log (after logrotate), reload the TLS files."""
        audit.trail_of(archive).reopen()
        log.info("worker %d: audit log reopened (SIGHUP)", worker)
        reload_tls()

    def reload_tls() -> None:
        """SIGHUP: serve renewed TLS certificates to new connections, no restart."""
        try:
            count = reload_server_contexts()
        except ConfigError as exc:
            log.error("worker %d: TLS files not reloaded, the loaded ones stay: %s", worker, exc)
            return
        log.info("worker %d: TLS certificate, key and CA bundle reloaded (%d)", worker, count)
        if count:  # a Security Alert, Software Configuration (PS3.15 A.5.3.11)
            loop.run_in_executor(
                None,
                functools.partial(
                    audit.configuration_changed,
                    settings,
                    archive.index,
                    user=_launcher() or "dicomvault",
                    subject="tls",
                    description="TLS certificate, key and CA bundle reloaded (SIGHUP)",
                ),
            )

    async def main() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        if early_stop:
            stop.set()
        # Named before the servers start: a stop arriving as they come up closes the
        # sockets, and the log line below must not fail on a closed one.
        host, port = sock.getsockname()[:2]
        http_host, http_port = http_sock.getsockname()[:2]
        tls_address = tls_sock.getsockname()[:2] if tls_sock is not None else None
        dimse_ready = asyncio.Event()
        http_ready = asyncio.Event()
        tls_ready = asyncio.Event()
        servers = [
            asyncio.ensure_future(
                serve_dicom(archive, settings, ready=dimse_ready, stop=stop, sock=sock)
            ),
            asyncio.ensure_future(
                serve_http(
                    archive,
                    settings,
                    ready=http_ready,
                    stop=stop,
                    sock=http_sock,
                    tls_acceptor=TlsAcceptor,  # HTTPS handshake failures are audited
                )
            ),
        ]
        if tls_sock is not None:
            # DICOM over TLS (PS3.15 B.12) on its own port, same registry and policy.
            tls = server_context(settings.tls)
            servers.append(
                asyncio.ensure_future(
                    serve_dicom(
                        archive, settings, ready=tls_ready, stop=stop, sock=tls_sock, ssl=tls
                    )
                )
            )
        else:
            tls_ready.set()
        servers += [
            asyncio.ensure_future(service)
            for service in background_services(archive, settings, stop, worker)
        ]

        async def both() -> None:
            await dimse_ready.wait()
            await http_ready.wait()
            await tls_ready.wait()

        both_ready = asyncio.ensure_future(both())
        await asyncio.wait([*servers, both_ready], return_when=asyncio.FIRST_COMPLETED)
        if both_ready.done():
            log.info(
                "worker %d: DIMSE listening on %s:%d as %s, DICOMweb on http://%s:%d/dicom-web"
                " (data %s)",
                worker,
                host,
                port,
                settings.dicom.ae_title,
                http_host,
                http_port,
                settings.storage.path,
            )
            if tls_address is not None:
                log.info("worker %d: DICOM over TLS listening on %s:%d", worker, *tls_address)
            if settings.tls.https:
                log.info("worker %d: HTTPS (DICOMweb at https://…/dicom-web)", worker)
        else:
            both_ready.cancel()
        # One server failing (port gone, …) stops the other: a half-up archive is worse
        # than a clear exit.
        await asyncio.wait(servers, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        for task in servers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        audit.application_activity(archive, started=False, launcher=_launcher())
        audit.close_trail(archive)  # what is queued is written before the index closes
        archive.close()
        log.info("worker %d: stopped", worker)


def _launcher() -> str | None:
    """The operating-system user running the server (Application Launcher)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def _worker_main(
    settings: Settings,
    worker: int,
    level: str,
    listeners: _Listeners,
    started: EventLike | None = None,
) -> None:
    # Signals before the event loop installs its handlers: a stop is remembered and done
    # once the loop runs (nothing is in flight yet; raising SystemExit mid-start-up
    # could leave a thread of the half-opened archive keeping the process alive), and a
    # SIGHUP has nothing to reopen or reload yet (by default it would kill the worker).
    early_stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early_stop.append(signum))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop_with_parent()  # a killed supervisor leaves no worker serving on alone
    if started is not None:
        started.set()  # the parent may forward SIGHUP from now on
    _configure_logging(level)
    _run_one(settings, listeners.dimse, listeners.http, worker, listeners.tls, early_stop)


class _LogFormatter(logging.Formatter):
    """The standard format, with the date and time text made once a second: a server
    logs a line per DIMSE message, thousands a second."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _LogFormatter("%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # A record is made per C-STORE: leave out what the format does not print, as the
    # logging HOWTO's "Optimization" section says — the caller's file and line (a walk
    # up the stack), the thread's and the multiprocessing process's names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # Migrations log every step at INFO; a server start is not the place for that.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _workers_option(value: str | None) -> int | str | None:
    """``--workers``: a number of processes from 1 to 64, or ``auto``."""
    if value is None or value == "auto":
        return value
    if ascii_digits(value) and 1 <= int(value) <= 64:
        return int(value)
    raise click.BadParameter(f"{value!r} is not a number from 1 to 64 or 'auto'")


@click.command("serve")
@config_options
@click.option(
    "--dicom-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="DIMSE port (setting dicom.port) [default: 11112].",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="HTTP port (setting http.port) [default: 8080]; DICOMweb at /dicom-web.",
)
@click.option("--ae-title", default=None, help="Our AE title (setting dicom.ae_title).")
@click.option(
    "--workers",
    default=None,
    metavar="N|auto",
    callback=lambda _ctx, _param, value: _workers_option(value),
    help="Processes sharing the ports (setting server.workers) [default: 1]; auto: one "
    "per CPU (one when a port is 0).",
)
def serve_command(
    config: Path | None,
    data_dir: Path | None,
    dicom_port: int | None,
    http_port: int | None,
    ae_title: str | None,
    workers: int | str | None,
) -> None:
    """Run the archive: DIMSE (Verification, Storage, Query/Retrieve SCP) on the DICOM
    port and DICOMweb (QIDO-RS, WADO-RS, STOW-RS, delete) on the HTTP port.

    Stops gracefully on SIGTERM or Ctrl-C: no new associations, in-flight messages
    finish, then exit.
    """

    def body() -> int:
        dicom: dict[str, object] = {}
        if dicom_port is not None:
            dicom["port"] = dicom_port
        if ae_title is not None:
            dicom["ae_title"] = ae_title
        overrides: dict[str, dict[str, object]] = {"dicom": dicom} if dicom else {}
        if http_port is not None:
            overrides["http"] = {"port": http_port}
        if workers is not None:
            overrides["server"] = {"workers": workers}
        # Until the server's own handlers are installed, a SIGHUP (logrotate, certificate
        # renewal) must not kill a server that is still starting.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        settings = load_cli_settings(config, data_dir, **overrides)
        _configure_logging(settings.server.log_level)
        if settings.tls.enabled or settings.tls.https:
            server_context(settings.tls)  # ConfigError naming the key or file: exit 2
        _refuse_if_exposed(settings)  # before anything listens
        n = settings.server.process_count()
        port = settings.dicom.port
        ephemeral = (
            port == 0
            or settings.http.port == 0
            or (settings.tls.enabled and settings.tls.dicom_port == 0)
        )
        if n > 1 and ephemeral and settings.server.workers == "auto":
            # Processes can only share a port they all know: with a port chosen by the
            # kernel (0, as tests use), one process serves.
            log.info("one worker: server.workers = auto needs fixed ports, and a port is 0")
            n = 1
        if n == 1:
            listeners = _listening_sockets(settings, reuse_port=False)
            _run_one(settings, listeners.dimse, listeners.http, 0, listeners.tls)
            return 0
        if port == 0 or settings.http.port == 0:
            raise click.UsageError("--workers needs a fixed --dicom-port and --http-port (not 0)")
        if settings.tls.enabled and settings.tls.dicom_port == 0:
            raise click.UsageError("--workers needs a fixed tls.dicom_port (not 0)")
        # A port another server holds is said here, once, not by every worker.
        with _worker_listeners(settings, n) as sockets:
            # Recovery once, alone, before any worker can spool (a connection made
            # meanwhile waits in a backlog).
            Archive.open(settings).close()
            ctx = multiprocessing.get_context("spawn")
            started = [ctx.Event() for _ in range(n)]  # set once a worker handles signals
            procs = [
                ctx.Process(
                    target=_worker_main,
                    args=(settings, i, settings.server.log_level, sockets[i], started[i]),
                    name=f"dicomvault-worker-{i}",
                )
                for i in range(n)
            ]
            stopping: list[int] = []

            def forward(signum: int, _frame: object) -> None:
                if signum != signal.SIGHUP:
                    stopping.append(signum)
                for proc, ready in zip(procs, started, strict=True):
                    # A worker still importing would die of a SIGHUP (the default action):
                    # it has nothing to reopen or reload yet anyway.
                    if proc.pid is not None and (signum != signal.SIGHUP or ready.is_set()):
                        os.kill(proc.pid, signum)

            # Before the first worker starts: a signal now must reach every worker started.
            signal.signal(signal.SIGTERM, forward)
            signal.signal(signal.SIGINT, forward)
            signal.signal(signal.SIGHUP, forward)  # audit log reopened, TLS reloaded: every worker
            log.info("starting %d worker processes on DICOM port %d", n, port)
            for proc in procs:
                if stopping:
                    break
                proc.start()
        # The supervisor's copies are closed now: a started worker has its own, and one
        # kept here would stay in the group after its worker ended, taking connections
        # nobody accepts.
        for proc in procs:
            if proc.pid is not None:
                proc.join()
        # A worker stopped by the signal before it could handle it stopped as asked.
        asked = {-signal.SIGTERM, -signal.SIGINT} if stopping else set()
        codes = [proc.exitcode or 0 for proc in procs if proc.pid is not None]
        return max((0 if code in asked else code for code in codes), default=0)

    run_guarded(body)
