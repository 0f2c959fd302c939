"""Peers for the Query/Retrieve SCP tests: an archive server with remotes, a destination
that aborts half-way, DCMTK storescp."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peers import DCMTK_ENV, ServerThread, free_port

from dicomvault.archive import Archive
from dicomvault.config import Settings, load_settings
from dicomvault.dimse.server import serve_dicom
from dicomvault.net.items import PresentationContextAC, UserInformation
from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, decode_pdu, encode_pdu


def qr_settings(tmp_path: Path, remotes: dict[str, int], **query: object) -> Settings:
    """Settings of a test archive; ``remotes`` (AE title -> port on 127.0.0.1) go through
    a TOML file, as a user writes them."""
    config = tmp_path / "dicomvault.toml"
    config.write_text(
        "".join(
            f'[remotes.{name.lower()}]\nae_title = "{name}"\nhost = "127.0.0.1"\nport = {port}\n'
            for name, port in remotes.items()
        )
    )
    return load_settings(
        config,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 2},
            **({"query": query} if query else {}),
        },
    )


@contextmanager
def archive_server(settings: Settings, files: list[Path]) -> Iterator[tuple[Archive, int]]:
    archive = Archive.open(settings)
    for path in files:
        archive.store_file(path)

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_dicom(archive, settings, ready=ready, stop=stop, sock=sock)

    srv = ServerThread(make).start()
    try:
        yield archive, srv.port
    finally:
        srv.close()
        archive.close()


@contextmanager
def storescp(folder: Path, port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "DEST", "-od", str(folder), *args, str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


class AbortingDestination:
    """Accepts every proposed context, then closes the connection after ``after`` bytes
    of P-DATA: a destination that dies in the middle of the sub-operations."""

    def __init__(self, after: int = 40000) -> None:
        self.after = after
        self.port = free_port()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                head = self._read(conn, 6)
                body = self._read(conn, struct.unpack(">I", head[2:])[0])
                rq = decode_pdu(head + body, 1 << 20)
                assert isinstance(rq, A_ASSOCIATE_RQ)
                ac = A_ASSOCIATE_AC(
                    rq.called_ae_title,
                    rq.calling_ae_title,
                    [
                        PresentationContextAC(ctx.id, 0, ctx.transfer_syntaxes[0])
                        for ctx in rq.presentation_contexts
                    ],
                    UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
                )
                conn.sendall(encode_pdu(ac))
                received = 0
                while received < self.after:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    received += len(chunk)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
