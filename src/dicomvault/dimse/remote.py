"""Associations the archive opens to a ``[remotes.NAME]`` entry: C-MOVE sub-associations
(PS3.4 C.4.2) and storage commitment reports (PS3.4 J.3.3) — one place for the AE titles,
limits and TLS (PS3.15 B.12: an entry with ``tls = true`` is verified against
``tls.ca_certificates`` and gets our certificate)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from dicomvault.config import RemoteAE, Settings
from dicomvault.net.items import RoleSelection
from dicomvault.net.requestor import ContextSpec, RequestorAssociation, associate
from dicomvault.security.tls import client_context


@asynccontextmanager
async def associate_remote(
    settings: Settings,
    remote: RemoteAE,
    contexts: Sequence[ContextSpec],
    *,
    roles: Sequence[RoleSelection] = (),
    timeout: float | None = None,
    logger: logging.Logger | None = None,
) -> AsyncIterator[RequestorAssociation]:
    """Associate with ``remote`` as ``dicom.ae_title``; see :func:`associate` for errors
    (and :class:`~dicomvault.model.errors.ConfigError` for unusable TLS files)."""
    tls = client_context(settings.tls) if remote.tls else None
    async with associate(
        remote.host,
        remote.port,
        called_ae=remote.ae_title,
        calling_ae=settings.dicom.ae_title,
        contexts=contexts,
        roles=roles,
        max_pdu=settings.dicom.max_pdu,
        timeout=timeout if timeout is not None else settings.dicom.idle_timeout,
        logger=logger,
        ssl=tls,
    ) as assoc:
        yield assoc
