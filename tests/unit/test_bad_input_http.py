"""The metrics port against slow and many clients, and where ``--listen`` binds.

Before: the handler's 10-s timeout applied to each read (one byte every 9 s held a thread for
days), every connection got a thread, and ``--listen 9900`` bound every address. Real sockets
against a real ``MetricsServer`` in this process.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from autoscaler.observability.exporter import ControllerMetrics, HealthState, MetricsServer
from autoscaler.observability.http_server import parse_listen
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
DEADLINE_S = 1.5
CAP = 4


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    served = MetricsServer(
        ControllerMetrics(),
        HealthState(interval_s=1.0),
        "127.0.0.1",
        0,
        deadline_s=DEADLINE_S,
        max_connections=CAP,
    )
    served.start()
    try:
        yield served
    finally:
        served.stop()


def healthz_status(port: int) -> int:
    """The status /healthz answers with (a fresh server has no cycle yet: 503 is an answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_client_dribbling_one_byte_at_a_time_is_cut_off_at_the_deadline(
    server: MetricsServer,
) -> None:
    client = socket.create_connection(("127.0.0.1", server.port))
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    started = time.monotonic()
    cut_after = None
    try:
        for byte in request:
            client.sendall(bytes([byte]))
            time.sleep(0.5)  # well under any per-read timeout
            client.settimeout(0.01)
            try:
                if client.recv(1) == b"":
                    cut_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                cut_after = time.monotonic() - started
                break
    finally:
        client.close()
    assert cut_after is not None, "the dribbling client was never cut off"
    assert DEADLINE_S <= cut_after < DEADLINE_S + 1.5
    assert healthz_status(server.port) in (200, 503)
    record(
        "bad-input",
        "a slow client on the metrics port",
        injected="a client sending its request one byte every 0.5 s",
        behaviour=f"connection closed after {cut_after:.1f} s (whole-request deadline "
        f"{DEADLINE_S} s); /healthz served meanwhile and after",
        lost="nothing",
    )


def test_connections_past_the_cap_are_closed_without_a_thread(server: MetricsServer) -> None:
    threads = threading.active_count()
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CAP * 5)]
    try:
        time.sleep(0.3)
        grown = threading.active_count() - threads
        refused = 0
        for sock in silent[CAP:]:
            sock.settimeout(1.0)
            try:
                refused += sock.recv(1) == b""
            except ConnectionResetError:
                refused += 1
    finally:
        for sock in silent:
            sock.close()
    assert grown <= CAP, grown
    assert refused == CAP * 4
    time.sleep(DEADLINE_S)
    assert healthz_status(server.port) in (200, 503)
    record(
        "bad-input",
        "a flood of connections on the metrics port",
        injected=f"{CAP * 5} silent connections at once (cap {CAP})",
        behaviour=f"{grown} server threads (at most the cap); the {refused} past the cap closed "
        "at once; the rest dropped at the deadline; /healthz served after",
        lost="nothing",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9900", ("127.0.0.1", 9900)),
        (":9900", ("127.0.0.1", 9900)),
        ("0.0.0.0:9901", ("0.0.0.0", 9901)),  # noqa: S104 - written out: every address
        ("[::1]:9902", ("::1", 9902)),
    ],
)
def test_a_bare_port_binds_loopback_any_other_address_only_when_written(
    text: str, expected: tuple[str, int]
) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "web:", "1.2.3.4:99999", "9900x"])
def test_a_listen_that_is_not_an_address_and_port_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)
