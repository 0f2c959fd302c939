"""HL7 v2 ORM^O01 test messages and a raw MLLP client (helper "hl7").

Messages are built field by field (``segment("OBR", {4: "…", 18: "A1"})``) so a test
states which field it sets and no one counts pipes by hand.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def segment(name: str, fields: Mapping[int, str]) -> str:
    """``NAME|f1|f2…`` with the given 1-based fields set and the others empty."""
    last = max(fields, default=0)
    return "|".join([name, *(fields.get(i, "") for i in range(1, last + 1))])


def msh(
    control_id: str = "MSG0001",
    *,
    kind: str = "ORM^O01",
    version: str = "2.3.1",
    encoding: str = "^~\\&",
    charset: str = "",
) -> str:
    fields = {
        3: "RIS",
        4: "HOSP",
        5: "DICOMVAULT",
        6: "RAD",
        7: "20261126101500",
        9: kind,
        10: control_id,
        11: "P",
        12: version,
    }
    if charset:
        fields[18] = charset
    # MSH-1 is the separator itself, so MSH-n is the n-th "|"-separated part after "MSH".
    parts = ["MSH", encoding, *(fields.get(i, "") for i in range(3, max(fields) + 1))]
    return "|".join(parts)


PID = segment("PID", {1: "1", 3: "P1^^^HOSP^MR", 5: "Doe^John^Q", 7: "19700101", 8: "M"})
PV1 = segment("PV1", {1: "1", 2: "O", 8: "R001^Ref^Doc"})


def order(
    control: str = "NW",
    *,
    accession: str = "A1",
    procedure_id: str = "RP1",
    sps_id: str = "SPS1",
    modality: str = "CT",
    start: str = "20261126101500",
    service: str = "CTHEAD^CT HEAD^L^^CT HEAD W/O",
    obr: bool = True,
    extra: Mapping[int, str] | None = None,
) -> list[str]:
    """An ORC + OBR order group (IHE RAD-4 v2.3.1 field use)."""
    segments = [
        segment(
            "ORC",
            {1: control, 2: "PL-" + accession, 3: "FI-" + accession, 5: "SC", 7: f"^^^{start}"},
        )
    ]
    if obr:
        fields = {
            1: "1",
            2: "PL-" + accession,
            3: "FI-" + accession,
            4: service,
            16: "O01^Ordering^Olga",
            18: accession,
            19: procedure_id,
            20: sps_id,
            24: modality,
            27: f"^^^{start}",
            34: "T1&Tech&Tina",
        }
        fields.update(extra or {})
        segments.append(segment("OBR", fields))
    return segments


def orm(
    *groups: list[str],
    control_id: str = "MSG0001",
    pid: str | None = PID,
    pv1: str | None = PV1,
    header: str | None = None,
    zds: str | None = None,
) -> bytes:
    """An ORM^O01 message (CR-separated segments) from order groups."""
    segments = [header if header is not None else msh(control_id)]
    segments += [s for s in (pid, pv1) if s is not None]
    for group in groups or (order(),):
        segments += group
    if zds is not None:
        segments.append(zds)
    return ("\r".join(segments) + "\r").encode()


def fields_of(ack: bytes) -> dict[str, list[str]]:
    """First segment of each id → its fields (MSH numbered as HL7 does: MSH-n at n)."""
    out: dict[str, list[str]] = {}
    for line in ack.decode("utf-8").split("\r"):
        if not line:
            continue
        parts = line.split("|")
        if parts[0] == "MSH":
            parts = ["MSH", "|", *parts[1:]]
        out.setdefault(parts[0], parts)
    return out


class MllpClient:
    """A raw MLLP client over a real socket, with bounded waits."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: bytes) -> None:
        self.send_raw(VT + message + FS + CR)

    def receive(self) -> bytes:
        """The next acknowledgement block's content."""
        deadline = time.monotonic() + 5.0
        while FS + CR not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no acknowledgement within 5 s")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; buffered {self.buffer!r}")
            self.buffer += chunk
        block, self.buffer = self.buffer.split(FS + CR, 1)
        assert block.startswith(VT), block
        return block[1:]

    def request(self, message: bytes) -> dict[str, list[str]]:
        self.send(message)
        return fields_of(self.receive())

    def closed_by_server(self) -> bool:
        """True when the server has closed the connection (EOF within 5 s)."""
        self.sock.settimeout(5.0)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
