"""Bad input from the sources the collectors read: DPDK telemetry, Ceph JSON, Prometheus HTTP.

Where it sits: the reliability suite (issue 7), next to the hand-picked hostile cases of
``tests/unit/collectors/`` (which it does not repeat): here hypothesis throws arbitrary bytes,
JSON values and truncations at the parsers, a fake DPDK process lies about which command it
answers or hangs up mid-session, a fake ``rados`` handle returns garbage, and a tiny HTTP
server at the process boundary plays a Prometheus returning garbage, errors, wrong shapes or
nothing. Every case must end as a stale scope or a ``MalformedReply``, never a number and
never another exception.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_api_client import PrometheusConnect

from autoscaler.model import Scope
from collectors.base import LastGood, guarded
from collectors.ceph import COMMANDS, CephCollector, parse_reading
from collectors.common import MalformedReply
from collectors.dpdk import (
    DpdkTelemetryCollector,
    decode_reply,
    parse_port_list,
    parse_stats,
    parse_xstats,
)
from collectors.node import NodeCollector
from collectors.promql_sli import PromqlSliCollector
from tests.reliability import record
from tests.unit.collectors.test_dpdk_telemetry import FakeTelemetry, _good, _stats

pytest_plugins = ["tests.reliability_plugin"]
FUZZ = settings(max_examples=300, deadline=None)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


# --- DPDK telemetry --------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_telemetry_reply_decode_or_are_malformed(data: bytes) -> None:
    """Arbitrary bytes as a DPDK telemetry reply (hypothesis).

    Expect: the decoded value or MalformedReply; never another exception.
    """
    with contextlib.suppress(MalformedReply):
        decode_reply(data, "/ethdev/list")


@FUZZ
@given(value=json_values)
def test_any_json_value_as_port_list_stats_or_xstats_parses_or_is_malformed(value: Any) -> None:
    """Arbitrary JSON values as /ethdev/list, /ethdev/stats and /ethdev/xstats (hypothesis).

    Expect: non-negative integer counters below 2^64, or MalformedReply.
    """
    for parse in (parse_port_list, lambda v: parse_stats(v, 0), lambda v: parse_xstats(v, 0)):
        try:
            parsed = parse(value)
        except MalformedReply:
            continue
        numbers = parsed if isinstance(parsed, list) else list(parsed.values())
        assert all(type(n) is int and 0 <= n < 2**64 for n in numbers)


REPLY = json.dumps({"/ethdev/stats": _stats(123456)}).encode()


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(REPLY) - 1))
def test_a_truncated_telemetry_reply_is_malformed(cut: int) -> None:
    """A DPDK stats reply cut short at any byte (hypothesis).

    Expect: MalformedReply.
    """
    with pytest.raises(MalformedReply):
        parse_stats(decode_reply(REPLY[:cut], "/ethdev/stats,0"), 0)


@pytest.fixture
def short_path() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dpdk-") as folder:
        yield Path(folder) / "t.v2"


def test_a_telemetry_process_that_answers_another_commands_reply_is_stale(
    short_path: Path,
) -> None:
    """A DPDK process that lies: answers /ethdev/stats with its /ethdev/list reply.

    Expect: the host is stale with 'expected key', no sample.
    """
    good = _good({0: 10, 1: 10})
    server = FakeTelemetry(short_path, lambda c: good("/ethdev/list"))
    try:
        seen = DpdkTelemetryCollector("h0", short_path).collect(100.0)
    finally:
        server.close()
    assert not seen.samples
    assert "expected key '/ethdev/stats'" in seen.stale[0].reason
    record(
        "bad-input",
        "DPDK telemetry replying to another command",
        injected="a telemetry socket answering every command with the port list",
        behaviour=f"host stale: {seen.stale[0].reason[:90]}",
        lost="nothing (no number taken)",
    )


def test_a_telemetry_process_that_hangs_up_mid_session_is_stale_then_recovers(
    short_path: Path,
) -> None:
    """A DPDK process closing the socket after the port list, then answering again.

    Expect: stale while it hangs up, counters again (no invented rate) when it answers.
    """
    good = _good({0: 10, 1: 10})
    hang_up = {"on": True}

    def answer(command: str) -> bytes | None:
        if hang_up["on"] and command != "/ethdev/list":
            return b""  # an empty datagram: the peer is gone
        return good(command)

    server = FakeTelemetry(short_path, answer)
    try:
        collector = DpdkTelemetryCollector("h0", short_path, timeout_s=1.0)
        first = collector.collect(100.0)
        hang_up["on"] = False
        second = collector.collect(101.0)
    finally:
        server.close()
    assert not first.samples and first.stale
    assert not second.stale and second.samples
    assert not [s for s in second.samples if s.metric.endswith("_rate")]


# --- Ceph --------------------------------------------------------------------------------


@FUZZ
@given(replies=st.fixed_dictionaries({key: json_values for key in COMMANDS}))
def test_any_json_as_the_five_ceph_replies_parses_or_is_malformed(replies: dict[str, Any]) -> None:
    """Arbitrary JSON values as Ceph's status, health, df, osd perf and osd tree (hypothesis).

    Expect: a CephReading or MalformedReply; never another exception.
    """
    with contextlib.suppress(MalformedReply):
        parse_reading(replies)


class GarbageRados:
    """A stand-in for the rados handle (the boundary to the Ceph mon): answers ``reply``."""

    def __init__(self, reply: Callable[[str], tuple[int, bytes, str]]) -> None:
        self.reply = reply

    def mon_command(self, command: str, _inbuf: bytes, timeout: int = 0) -> tuple[int, bytes, str]:
        return self.reply(json.loads(command)["prefix"])


CEPH_GARBAGE: dict[str, Callable[[str], tuple[int, bytes, str]]] = {
    "not json": lambda p: (0, b"<html>502</html>", ""),
    "invalid utf-8": lambda p: (0, b"\xff\xfe\xfd", ""),
    "empty": lambda p: (0, b"", ""),
    "error code": lambda p: (-110, b"", "timed out"),
    "NaN everywhere": lambda p: (0, b'{"status": NaN, "nodes": NaN}', ""),
    "hangs": lambda p: (time.sleep(3), (0, b"{}", ""))[1],  # type: ignore[func-returns-value]
}


@pytest.mark.parametrize("case", sorted(CEPH_GARBAGE))
def test_a_ceph_mon_answering_garbage_makes_the_cluster_stale(case: str) -> None:
    """A Ceph mon answering garbage, an error, nothing or too late.

    Expect: the cluster scope stale, no sample, within the collector's timeout.
    """
    collector = CephCollector(GarbageRados(CEPH_GARBAGE[case]), timeout_s=1.0)
    started = time.monotonic()
    seen = guarded(collector, 100.0, LastGood())
    assert time.monotonic() - started < 2.5
    assert not seen.samples
    assert [(s.scope, s.target) for s in seen.stale] == [(Scope.CLUSTER, "ceph")]
    record(
        "bad-input",
        f"Ceph mon reply: {case}",
        injected=f"Ceph mon_command replies: {case}",
        behaviour=f"cluster stale: {seen.stale[0].reason[:80]}",
        lost="nothing (no number taken)",
    )


# --- Prometheus --------------------------------------------------------------------------


class FakePrometheus:
    """An HTTP server on loopback answering every query with ``respond()``: (status, body)."""

    def __init__(self) -> None:
        self.respond: Callable[[], tuple[int, bytes] | None] = lambda: (200, b"")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                answer = owner.respond()
                if answer is None:  # drop the connection without a word
                    self.close_connection = True
                    self.connection.close()
                    return
                status, body = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.close()


def _vector(items: list[Any]) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": items}}
    ).encode()


def _node_metrics() -> bytes:
    return _vector([{"metric": {"instance": "n1:9100", "chip": "rack_r1"}, "value": [1, "0.5"]}])


PROMETHEUS_GARBAGE: dict[str, Callable[[], tuple[int, bytes] | None]] = {
    "empty body": lambda: (200, b""),
    "html": lambda: (200, b"<html><body>proxy error</body></html>"),
    "truncated json": lambda: (200, _node_metrics()[:25]),
    "http 500": lambda: (500, b"internal error"),
    "http 503 json error": lambda: (503, b'{"status":"error","error":"overloaded"}'),
    "status error": lambda: (200, b'{"status":"error","errorType":"bad_data","error":"x"}'),
    "matrix instead of vector": lambda: (
        200,
        b'{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}',
    ),
    "entries without value": lambda: (200, _vector([{"metric": {"instance": "n1:9100"}}])),
    "result not a list": lambda: (
        200,
        b'{"status":"success","data":{"resultType":"vector","result":"all good"}}',
    ),
    "connection dropped": lambda: None,
    "slow (past the timeout)": lambda: (time.sleep(2.5), (200, _node_metrics()))[1],  # type: ignore[func-returns-value]
}


@pytest.mark.parametrize("case", sorted(PROMETHEUS_GARBAGE))
def test_a_prometheus_returning_garbage_makes_node_and_sli_scopes_stale(
    case: str, prometheus: FakePrometheus
) -> None:
    """A Prometheus answering garbage, errors, wrong shapes, nothing or too late.

    Expect: every scope of the node and PromQL SLI collectors stale, no sample, within the
    timeout; and both read normally again once Prometheus answers properly.
    """
    prometheus.respond = PROMETHEUS_GARBAGE[case]
    client = PrometheusConnect(url=prometheus.url, disable_ssl=True)
    node = NodeCollector(client, {"h1": "n1:9100"}, ["r1"], timeout_s=1.0)
    sli = PromqlSliCollector(
        client, "web", "rate(good[$window])", "rate(all[$window])", timeout_s=1.0
    )
    started = time.monotonic()
    seen = [guarded(c, 100.0, LastGood()) for c in (node, sli)]
    assert time.monotonic() - started < 5
    for collection in seen:
        assert not collection.samples, case
        assert collection.stale
    assert {(s.scope, s.target) for s in seen[0].stale} >= {
        (Scope.HOST, "h1"),
        (Scope.RACK, "r1"),
    }
    assert [(s.scope, s.target) for s in seen[1].stale] == [(Scope.BUSINESS, "web")]

    prometheus.respond = lambda: (200, _node_metrics())
    deadline = time.monotonic() + 5
    healthy = guarded(node, 200.0, LastGood())
    while healthy.stale and time.monotonic() < deadline:  # a slow case's thread may still run
        time.sleep(0.2)
        healthy = guarded(node, 200.0, LastGood())
    assert any(s.metric == "temperature_celsius" for s in healthy.samples)
    record(
        "bad-input",
        f"Prometheus: {case}",
        injected=f"Prometheus HTTP API answering: {case}",
        behaviour=f"node and SLI scopes stale ({seen[0].stale[0].reason[:70]}); recovered after",
        lost="nothing (no number taken)",
    )


def test_a_prometheus_reporting_nan_or_infinite_values_gives_no_number(
    prometheus: FakePrometheus,
) -> None:
    """A Prometheus whose vector holds NaN, +Inf and negative SLI rates.

    Expect: NaN/Inf dropped as missing (stale, never zero); a negative rate refused.
    """
    prometheus.respond = lambda: (
        200,
        _vector(
            [
                {"metric": {"instance": "n1:9100", "chip": "rack_r1"}, "value": [1, "NaN"]},
                {"metric": {"instance": "n1:9100"}, "value": [1, "+Inf"]},
            ]
        ),
    )
    client = PrometheusConnect(url=prometheus.url, disable_ssl=True)
    node = guarded(NodeCollector(client, {"h1": "n1:9100"}, ["r1"], timeout_s=1.0), 1.0, LastGood())
    assert not node.samples
    assert {(s.scope, s.target) for s in node.stale} == {(Scope.HOST, "h1"), (Scope.RACK, "r1")}
    prometheus.respond = lambda: (200, _vector([{"metric": {}, "value": [1, "-3"]}]))
    sli = PromqlSliCollector(
        client, "web", "rate(good[$window])", "rate(all[$window])", timeout_s=1.0
    )
    seen = guarded(sli, 1.0, LastGood())
    assert not seen.samples and "negative" in seen.stale[0].reason
