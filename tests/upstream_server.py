"""A local HTTP server for upstream-weight tests: serves bytes by path, honours ``Range: bytes=N-`` (206), can cut
one response short (a dropped connection) and records every request. Binds 127.0.0.1 only."""

from __future__ import annotations

import http.server
import re
import threading
from contextlib import contextmanager


class Served:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}  # path -> bytes to send before dropping the connection, once
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.url = ""

    def ranges(self, path: str) -> list[str]:
        return [r for p, r in self.requests if p == path and r]


def _handler(served: Served):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            served.requests.append((path, rng))
            data = served.files.get(path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(re.match(r"bytes=(\d+)-", rng)[1]) if rng else 0
            if rng:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            cut = served.cut_once.pop(path, None)
            if cut is not None:
                self.wfile.write(data[start:start + cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

        def log_message(self, *args):
            pass

    return Handler


@contextmanager
def serve():
    served = Served()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
