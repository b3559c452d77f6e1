"""The DPDK telemetry client against a fake telemetry process on a real SEQPACKET socket.

The fake stands at the process boundary (the socket): it answers like DPDK 22.11 does, or with
malformed, truncated, hostile or no replies, and the collector must turn each into a clear error
and a stale host, never a number.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoscaler.model import Collection, Scope, SignalName
from collectors.common import MalformedReply
from collectors.dpdk import DpdkTelemetryCollector, decode_reply, parse_port_list, parse_stats

Answer = Callable[[str], bytes | None]
STAT_NAMES = ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors")


def _stats(base: int) -> dict[str, int]:
    return {**{name: base for name in STAT_NAMES}, "rx_nombuf": base // 10}


class FakeTelemetry:
    """A telemetry v2 server: ``hello`` on connect, then ``answer(command)`` per command."""

    def __init__(self, path: Path, answer: Answer, hello: bytes | None = None) -> None:
        self.path = path
        self.answer = answer
        self.hello = (
            hello or json.dumps({"version": "fake", "pid": 42, "max_output_len": 16384}).encode()
        )
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server.bind(str(path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.send(self.hello)
                while command := conn.recv(1024):
                    reply = self.answer(command.decode())
                    if reply is None:
                        threading.Event().wait(5)  # hang: never answer
                        break
                    conn.send(reply)

    def close(self) -> None:
        self.server.close()


def _good(counters: dict[int, int], ports: tuple[int, ...] = (0, 1)) -> Answer:
    def answer(command: str) -> bytes:
        if command == "/ethdev/list":
            return json.dumps({"/ethdev/list": list(ports)}).encode()
        prefix, port = command.split(",")
        if prefix == "/ethdev/stats":
            return json.dumps({prefix: _stats(counters[int(port)])}).encode()
        return json.dumps(
            {prefix: {"rx_missed_errors": 0, "rx_q0_errors": counters[int(port)]}}
        ).encode()

    return answer


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "dpdk_telemetry.v2"


@pytest.fixture
def serve(socket_path: Path) -> Iterator[Callable[..., FakeTelemetry]]:
    servers: list[FakeTelemetry] = []

    def start(answer: Answer, hello: bytes | None = None) -> FakeTelemetry:
        server = FakeTelemetry(socket_path, answer, hello)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _value(collection: Collection, metric: str, port: str | None) -> float | None:
    for sample in collection.samples:
        if sample.metric == metric and sample.label("port") == port:
            return float(sample.value)
    return None


def test_rates_are_counter_deltas_over_the_time_between_collections(
    socket_path: Path, serve: Callable[..., FakeTelemetry]
) -> None:
    counters = {0: 1000, 1: 50}
    serve(_good(counters))
    collector = DpdkTelemetryCollector("h0", socket_path)
    first = collector.collect(100.0)
    assert _value(first, "dpdk_port_rx_packets_rate", "0") is None
    assert _value(first, "dpdk_port_ipackets_total", "0") == 1000
    counters[0], counters[1] = 1600, 50
    second = collector.collect(102.0)
    assert _value(second, "dpdk_port_rx_packets_rate", "0") == 300.0
    assert _value(second, "dpdk_port_rx_packets_rate", "1") == 0.0
    assert _value(second, "dpdk_port_rx_drop_rate", "0") == 300.0 + 30.0  # imissed + nombuf
    assert _value(second, SignalName.DPDK_RX_DROP_RATE, None) == 330.0
    assert _value(second, SignalName.DPDK_RX_ERROR_RATE, None) == 300.0
    assert _value(second, "dpdk_rx_packets_rate", None) == 300.0
    xstat = [
        s for s in second.samples if s.label("xstat") == "rx_q0_errors" and s.label("port") == "0"
    ]
    assert [s.value for s in xstat] == [300.0]


def test_a_counter_going_back_gives_no_rate_rather_than_a_negative_one(
    socket_path: Path, serve: Callable[..., FakeTelemetry]
) -> None:
    counters = {0: 1000, 1: 1000}
    serve(_good(counters))
    collector = DpdkTelemetryCollector("h0", socket_path)
    collector.collect(100.0)
    counters[0] = 10
    after_reset = collector.collect(101.0)
    assert not after_reset.stale
    assert _value(after_reset, "dpdk_port_rx_packets_rate", "0") is None
    assert _value(after_reset, SignalName.DPDK_RX_DROP_RATE, None) is None
    assert _value(after_reset, "dpdk_port_rx_packets_rate", "1") == 0.0


HOSTILE: dict[str, tuple[Answer, str]] = {
    "not json": (lambda c: b"\xff\xfe{", "not JSON"),
    "NaN counter": (
        lambda c: b'{"/ethdev/list": [0]}'
        if c == "/ethdev/list"
        else b'{"/ethdev/stats": {"ipackets": NaN}}',
        "non-finite",
    ),
    "wrong key": (lambda c: b'{"/eal/params": [0]}', "expected key '/ethdev/list'"),
    "extra key": (lambda c: b'{"/ethdev/list": [0], "x": 1}', "expected key"),
    "negative counter": (
        lambda c: b'{"/ethdev/list": [0]}'
        if c == "/ethdev/list"
        else json.dumps({"/ethdev/stats": {**_stats(1), "ierrors": -5}}).encode(),
        "outside 0..2^64",
    ),
    "bool counter": (
        lambda c: b'{"/ethdev/list": [0]}'
        if c == "/ethdev/list"
        else json.dumps({"/ethdev/stats": {**_stats(1), "imissed": True}}).encode(),
        "got bool",
    ),
    "missing counter": (
        lambda c: b'{"/ethdev/list": [0]}' if c == "/ethdev/list" else b'{"/ethdev/stats": {}}',
        "no 'ipackets'",
    ),
    "reply over max_output_len": (
        lambda c: json.dumps({"/ethdev/list": list(range(5000))}).encode(),
        "longer than 16384 bytes",
    ),
    "too many ports": (
        lambda c: json.dumps({"/ethdev/list": list(range(2000))}).encode(),
        "more than",
    ),
    "repeated ports": (lambda c: b'{"/ethdev/list": [0, 0]}', "repeated"),
    "deep nesting": (
        lambda c: b'{"/ethdev/list": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "recursion",
    ),
    "hostile xstat name": (
        lambda c: b'{"/ethdev/list": [0]}'
        if c == "/ethdev/list"
        else json.dumps(
            {c.split(",")[0]: _stats(1) if "xstats" not in c else {"a\\nb": 1}}
        ).encode(),
        "bad xstat name",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_reply_is_a_clear_error_and_a_stale_host_never_a_number(
    case: str, socket_path: Path, serve: Callable[..., FakeTelemetry]
) -> None:
    answer, complaint = HOSTILE[case]
    serve(answer)
    collector = DpdkTelemetryCollector("h0", socket_path, timeout_s=2.0)
    seen = collector.collect(100.0)
    assert not seen.samples
    assert [(s.scope, s.target) for s in seen.stale] == [(Scope.HOST, "h0")]
    assert complaint in seen.stale[0].reason


def test_a_server_that_never_answers_costs_one_timeout(
    socket_path: Path, serve: Callable[..., FakeTelemetry]
) -> None:
    serve(lambda c: None)
    collector = DpdkTelemetryCollector("h0", socket_path, timeout_s=0.3)
    seen = collector.collect(100.0)
    assert seen.duration_s < 1.0
    assert not seen.samples
    assert "timed out" in seen.stale[0].reason


@pytest.mark.parametrize(
    ("hello", "complaint"),
    [
        (b"hello", "not JSON"),
        (b'{"version": "x", "max_output_len": 16384}', "no 'pid'"),
        (b'{"pid": 1, "max_output_len": -1}', "outside"),
    ],
)
def test_a_bad_hello_is_refused(
    hello: bytes, complaint: str, socket_path: Path, serve: Callable[..., FakeTelemetry]
) -> None:
    serve(_good({0: 1, 1: 1}), hello=hello)
    seen = DpdkTelemetryCollector("h0", socket_path).collect(100.0)
    assert not seen.samples and complaint in seen.stale[0].reason


def test_no_socket_at_all_is_a_stale_host(tmp_path: Path) -> None:
    seen = DpdkTelemetryCollector("h0", tmp_path / "absent.v2").collect(100.0)
    assert not seen.samples
    assert seen.stale[0].last_good is None


def test_parsers_name_what_is_wrong() -> None:
    with pytest.raises(MalformedReply, match="expected list"):
        parse_port_list({"0": 0})
    with pytest.raises(MalformedReply, match="no 'rx_nombuf'"):
        parse_stats({name: 0 for name in STAT_NAMES}, 0)
    with pytest.raises(MalformedReply, match="Infinity"):
        decode_reply(b'{"/ethdev/list": Infinity}', "/ethdev/list")
