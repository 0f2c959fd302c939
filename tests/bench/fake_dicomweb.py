"""A stand-in for ``dicomvault`` in the DICOMweb benchmark's tests: just enough of
``import --json`` and ``serve --http-port P`` (``/healthz``, STOW-RS, WADO-RS of a study,
series metadata, QIDO-RS studies by PatientID / PatientName prefix / StudyDate range),
all in memory, so the harness runs end to end without the real server or Orthanc."""

from __future__ import annotations

import io
import json
import re
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydicom import dcmread

ROOT = "/dicom-web"


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def do_import(argv: list[str]) -> int:
    data = Path(_option(argv, "--data-dir"))
    data.mkdir(parents=True, exist_ok=True)
    folders = [Path(a) for a in argv if not a.startswith("--") and Path(a).is_dir()]
    files = sorted(str(p) for folder in folders for p in folder.glob("*.dcm"))
    with (data / "imported.txt").open("a") as out:
        out.writelines(f"{name}\n" for name in files)
    print(json.dumps({"stored": len(files), "rejected": [], "failed": []}))
    return 0


class Store:
    def __init__(self, data: Path) -> None:
        self.blobs: dict[str, list[bytes]] = {}
        self.headers: list[Any] = []
        listing = data / "imported.txt"
        for name in listing.read_text().split() if listing.exists() else []:
            self.add(Path(name).read_bytes())

    def add(self, blob: bytes) -> None:
        ds = dcmread(io.BytesIO(blob), stop_before_pixels=True)
        self.blobs.setdefault(str(ds.StudyInstanceUID), []).append(blob)
        self.headers.append(ds)


def _matches(ds: Any, query: dict[str, str]) -> bool:
    for key, value in query.items():
        if key == "PatientID" and str(ds.PatientID) != value:
            return False
        if key == "PatientName" and not str(ds.PatientName).startswith(value.rstrip("*")):
            return False
        if key == "StudyDate":
            low, high = value.split("-")
            if not low <= str(ds.StudyDate) <= high:
                return False
    return True


def make_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, document: Any) -> None:
            self._send(200, json.dumps(document).encode(), "application/dicom+json")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            boundary = re.search(r"boundary=([^;\s]+)", self.headers["Content-Type"])
            assert boundary is not None
            parts = body.split(b"--" + boundary.group(1).encode())[1:-1]
            for part in parts:
                store.add(part.split(b"\r\n\r\n", 1)[1][:-2])
            self._json({"00081199": {"vr": "SQ", "Value": [{} for _ in parts]}})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._send(200, b"ok", "text/plain")
                return
            path = url.path.removeprefix(ROOT).strip("/").split("/")
            if path == ["studies"]:
                query = {k: v for k, v in parse_qsl(url.query) if k != "includefield"}
                self._json([{} for ds in store.headers if _matches(ds, query)])
            elif len(path) == 2 and path[0] == "studies":
                boundary = uuid.uuid4().hex
                body = b"".join(
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + blob
                    + b"\r\n"
                    for blob in store.blobs.get(unquote(path[1]), [])
                )
                body += f"--{boundary}--\r\n".encode()
                ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
                self._send(200, body, ctype)
            elif len(path) == 5 and path[4] == "metadata":
                series = [ds for ds in store.headers if str(ds.SeriesInstanceUID) == path[3]]
                self._json([{} for _ in series])
            else:
                self._send(404, b"{}", "application/json")

    return Handler


def main(argv: list[str]) -> int:
    if argv[0] == "import":
        return do_import(argv)
    store = Store(Path(_option(argv, "--data-dir")))
    server = ThreadingHTTPServer(
        ("127.0.0.1", int(_option(argv, "--http-port"))), make_handler(store)
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
