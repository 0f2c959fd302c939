"""A DIMSE request refused 0x0124 Not Authorized (PS3.7 C.5) is a Security Alert, Use of
Restricted Function (PS3.15 A.5.3.11, 110132): our own requestor over 127.0.0.1 sends a
C-STORE on a context whose SCU role the archive refused (pynetdicom would hold it back),
as in tests/security/test_access.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from dicomvault.archive import audit
from dicomvault.archive.audit import AuditFilter, trail_of
from dicomvault.net import DimseStatus, RoleSelection, associate

from .test_access import CT, CT_STORAGE, EXPLICIT_LE, _settings, _ws, archive_server


def test_refused_c_store_is_use_of_restricted_function(tmp_path: Path) -> None:
    with archive_server(_settings(tmp_path, _ws(permissions='["get"]')), [CT]) as (archive, port):

        async def store_anyway() -> DimseStatus:
            async with associate(
                "127.0.0.1", port, called_ae="DICOMVAULT", calling_ae="WS",
                contexts=[(CT_STORAGE, [EXPLICIT_LE])],
                roles=[RoleSelection(CT_STORAGE, True, True)],
            ) as ours:  # fmt: skip
                return await ours.send_file(CT)

        assert asyncio.run(store_anyway()).status == 0x0124
        deadline = time.monotonic() + 10
        while True:
            trail_of(archive).flush(5)
            rows = audit.search(archive, AuditFilter(event_id="110113", user="WS"))
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        (row,) = rows
        assert (row.event_type, row.outcome, row.peer) == ("110132", 4, "127.0.0.1")
        assert "C-STORE" in row.xml
        assert CT_STORAGE in row.xml
