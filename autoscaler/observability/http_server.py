"""The HTTP server under /metrics and /healthz: a deadline per request, a cap on connections.

Where it sits: under ``MetricsServer`` (``autoscaler.observability.exporter``). The standard
library's ``ThreadingHTTPServer`` starts a thread per connection without limit, and its handler
timeout applies to each read: a client sending one byte every few seconds holds a thread for
days, and a flood of connections makes a thread each. Here every connection has one deadline
for the whole exchange (each read and write waits at most what is left of it), and at most
``max_connections`` are served at once; a connection past the cap is closed at once, without a
thread. ``parse_listen`` reads ``--listen``: a bare port binds loopback, any other address must
be written out.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

LOOPBACK = "127.0.0.1"


def parse_listen(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``9900``, ``:9900`` (both loopback), ``ADDR:9900`` or
    ``[ADDR]:9900``; ``ValueError`` for anything else."""
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]") or LOOPBACK
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants [ADDRESS:]PORT, got {text!r}")
    return host, int(port)


class _DeadlineReader(io.RawIOBase):
    """Reads of a socket that never wait past one deadline in total."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class DeadlineHandler(BaseHTTPRequestHandler):
    """A handler whose whole exchange (request in, answer out) ends by ``deadline_s``."""

    deadline_s = 5.0

    def setup(self) -> None:
        super().setup()
        self.deadline = time.monotonic() + self.deadline_s
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self.deadline))

    def answer(self, status: int, content_type: str, body: bytes) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.connection.settimeout(left)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class BoundedHTTPServer(HTTPServer):
    """At most ``max_connections`` connections served at once, each on its own thread."""

    daemon_threads = True
    request_queue_size = 64  # a burst waits in the backlog to be accepted (or refused) at once

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[DeadlineHandler],
        max_connections: int = 16,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        worker = threading.Thread(
            target=self._serve, args=(request, client_address), name="http", daemon=True
        )
        worker.start()

    def _serve(self, request: socket.socket, client_address: object) -> None:
        # A client that times out or resets is not an error here: it is dropped.
        try:
            with contextlib.suppress(OSError, ValueError):
                self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()
