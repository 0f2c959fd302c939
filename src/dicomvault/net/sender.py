"""Send files and folders to a Storage SCP over one or more associations (PS3.4 B.2.1).

Each file goes as stored: its own transfer syntax is proposed first, with Explicit and
Implicit VR Little Endian as fall-backs (see :func:`~dicomvault.net.requestor.contexts_for_files`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomvault.net.errors import NetError
from dicomvault.net.fileio import FileInfo, NotDicomFile, read_file_info
from dicomvault.net.handlers import DimseStatus
from dicomvault.net.requestor import associate, contexts_for_files

#: (SOP class, transfer syntax) pairs per association: each needs its own context and
#: at worst a fall-back one, and PS3.8 9.3.2.2 allows 128 contexts.
MAX_CONTEXTS = 64


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of sending one file."""

    path: Path
    status: DimseStatus | None = None
    error: str | None = None
    size: int = 0

    @property
    def outcome(self) -> str:
        """ "sent", "warning" or "failed"."""
        if self.status is None:
            return "failed"
        category = self.status.category
        if category == "success":
            return "sent"
        return "warning" if category == "warning" else "failed"

    @property
    def reason(self) -> str:
        """Why it failed or warned, in words."""
        if self.error:
            return self.error
        if self.status is None:
            return ""
        text = f"status 0x{self.status.status:04X}"
        return f"{text}: {self.status.error_comment}" if self.status.error_comment else text


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named and files under folders named (recursively), sorted per folder."""
    out: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            for root, dirs, files in os.walk(item):
                dirs.sort()
                out.extend(Path(root) / name for name in sorted(files))
        else:
            out.append(item)
    return out


def _batches(infos: list[FileInfo]) -> list[list[FileInfo]]:
    """Split so that each batch needs at most :data:`MAX_CONTEXTS` contexts."""
    batches: list[list[FileInfo]] = []
    current: list[FileInfo] = []
    keys: set[tuple[str, str]] = set()
    for info in sorted(infos, key=lambda i: (i.sop_class_uid, i.transfer_syntax_uid)):
        key = (info.sop_class_uid, info.transfer_syntax_uid)
        if key not in keys and len(keys) == MAX_CONTEXTS:
            batches.append(current)
            current, keys = [], set()
        keys.add(key)
        current.append(info)
    if current:
        batches.append(current)
    return batches


async def send_files(
    paths: Sequence[str | os.PathLike[str]],
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "DICOMVAULT",
    associations: int = 1,
    max_pdu: int = 262144,
    timeout: float = 30.0,
    on_result: Callable[[SendResult], None] | None = None,
    logger: logging.Logger | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> list[SendResult]:
    """C-STORE every file of ``paths`` (folders recursively) to ``host:port``.

    Parameters
    ----------
    associations
        How many associations send in parallel.
    on_result
        Called after each file (for a progress bar).
    ssl, server_hostname
        Associate over TLS (PS3.15 B.12), see :func:`~dicomvault.net.requestor.associate`.

    Returns
    -------
    list of SendResult
        One per file found, including those that are not DICOM.
    """
    results: list[SendResult] = []

    def done(result: SendResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    infos: list[FileInfo] = []
    for path in await asyncio.to_thread(collect_files, paths):
        try:
            infos.append(await asyncio.to_thread(read_file_info, path))
        except (NotDicomFile, OSError) as exc:
            done(SendResult(path, error=f"not sent: {exc}"))
    for batch in _batches(infos):
        contexts = contexts_for_files(batch)
        queue: asyncio.Queue[FileInfo] = asyncio.Queue()
        for info in batch:
            queue.put_nowait(info)

        workers = max(1, min(associations, len(batch)))
        job = _Job(
            host, port, called_ae, calling_ae, contexts, max_pdu, timeout, logger, done,
            ssl, server_hostname,
        )  # fmt: skip
        await asyncio.gather(*(_worker(job, queue) for _ in range(workers)))
    return results


@dataclass(frozen=True, slots=True)
class _Job:
    host: str
    port: int
    called_ae: str
    calling_ae: str
    contexts: list[tuple[str, list[str]]]
    max_pdu: int
    timeout: float
    logger: logging.Logger | None
    done: Callable[[SendResult], None]
    ssl: _ssl.SSLContext | None = None
    server_hostname: str | None = None


async def _worker(job: _Job, queue: asyncio.Queue[FileInfo]) -> None:
    """Send from ``queue`` over one association; open a new one if it is aborted."""
    while not queue.empty():
        try:
            async with associate(
                job.host,
                job.port,
                called_ae=job.called_ae,
                calling_ae=job.calling_ae,
                contexts=job.contexts,
                max_pdu=job.max_pdu,
                timeout=job.timeout,
                logger=job.logger,
                ssl=job.ssl,
                server_hostname=job.server_hostname,
            ) as assoc:
                while not queue.empty():
                    info = queue.get_nowait()
                    try:
                        status = await assoc.send_file(info.path)
                    except (NetError, NotDicomFile, OSError, TimeoutError) as exc:
                        job.done(SendResult(info.path, error=str(exc) or type(exc).__name__))
                        if assoc.fsm.state != "Sta6":
                            break
                        continue
                    job.done(SendResult(info.path, status, size=info.size))
        except (NetError, OSError, TimeoutError) as exc:
            # The association failed as a whole: the rest of the queue fails too.
            reason = f"association failed: {str(exc) or type(exc).__name__}"
            while not queue.empty():
                job.done(SendResult(queue.get_nowait().path, error=reason))
            return
