"""``serve_dicom``: the archive's DIMSE listener (Verification and Storage SCP)."""

from __future__ import annotations

import asyncio
import logging
import socket

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.dimse.store import ArchiveStoreHandler
from dicomvault.net.acceptor import AcceptorPolicy, serve
from dicomvault.net.handlers import ServiceRegistry

log = logging.getLogger("dicomvault.dimse")


def policy_from_settings(settings: Settings) -> AcceptorPolicy:
    """The acceptor policy of the ``[dicom]`` settings section."""
    dicom = settings.dicom
    allowed = frozenset(title.strip() for title in dicom.allowed_calling_aes)
    return AcceptorPolicy(
        ae_title=dicom.ae_title,
        check_called_ae=dicom.check_called_ae,
        calling_ae_allowed=(lambda title: title in allowed) if allowed else None,
        max_pdu=dicom.max_pdu,
        max_associations=dicom.max_associations,
        idle_timeout=dicom.idle_timeout,
        artim_timeout=dicom.artim_timeout,
    )


def registry_for(archive: Archive) -> ServiceRegistry:
    """Verification (PS3.4 A) and Storage of every storage SOP class (PS3.4 B)."""
    registry = ServiceRegistry()
    registry.add_verification()
    registry.add_store(ArchiveStoreHandler(archive))
    return registry


async def serve_dicom(
    archive: Archive,
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve DIMSE for ``archive`` until ``stop`` is set.

    Parameters
    ----------
    archive
        Where C-STORE requests go.
    settings
        ``settings.dicom`` gives host, port, AE title, limits and timeouts.
    ready
        Set once listening.
    stop
        Graceful shutdown: stop accepting, finish messages in flight, return.
    sock
        A pre-bound listening socket (e.g. SO_REUSEPORT, one per worker process).
    """
    await serve(
        registry_for(archive),
        policy_from_settings(settings),
        host=settings.dicom.host,
        port=settings.dicom.port,
        sock=sock,
        ready=ready,
        stop=stop,
        logger=log,
        grace=max(settings.dicom.idle_timeout, 5.0),
    )
