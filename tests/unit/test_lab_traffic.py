"""The lab's traffic generator: where it may send requests, and what its summary says."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import traffic
from lab.traffic import Summary, TargetRefused, check_target, percentile


def test_loopback_targets_are_allowed_without_subnets() -> None:
    assert check_target("http://127.0.0.1:8080/x?y=1") == traffic.Target(
        "127.0.0.1", 8080, "/x?y=1"
    )
    assert check_target("http://[::1]/").host == "::1"
    assert check_target("http://127.0.0.2").port == 80


def test_lab_subnet_targets_are_allowed_only_when_given() -> None:
    assert check_target("http://10.77.0.5:80/", ["10.77.0.0/24"]).host == "10.77.0.5"
    with pytest.raises(TargetRefused, match="neither loopback nor in the lab subnets"):
        check_target("http://10.77.1.5/", ["10.77.0.0/24"])
    with pytest.raises(TargetRefused, match="none given"):
        check_target("http://10.77.0.5/")


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/",
        "http://localhost/",
        "http://example.com/",
        "https://127.0.0.1/",
        "ftp://127.0.0.1/",
    ],
)
def test_targets_outside_the_lab_or_by_name_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_target(url, ["10.77.0.0/24"])


@pytest.mark.parametrize(
    ("rate", "duration", "count"),
    [
        (0, 1, 1),
        (traffic.MAX_RATE + 1, 1, 1),
        (1, 0, 1),
        (1, traffic.MAX_DURATION_S + 1, 1),
        (1, 1, 0),
        (1, 1, traffic.MAX_REQUESTS + 1),
    ],
)
def test_rate_duration_and_count_are_bounded(rate: float, duration: float, count: int) -> None:
    with pytest.raises(ValueError):
        traffic.run("http://127.0.0.1:9/", rate=rate, duration_s=duration, max_requests=count)


def test_the_summary_counts_failures_and_latency_percentiles() -> None:
    s = Summary(url="http://127.0.0.1/", rate=1, sent=5, ok=3, http_error=1, timeout=1)
    s.latencies_ms = [10.0, 30.0, 20.0]
    data = s.to_dict()
    assert (s.failures, s.completed) == (2, 5)
    assert data["failures"] == 2
    assert data["latency_ms"] == {"p50": 20.0, "p95": 30.0, "p99": 30.0, "max": 30.0}
    assert "latencies_ms" not in data
    assert percentile([], 0.5) is None


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        status = 503 if self.path == "/bad" else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"vm=unit\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_a_run_is_bounded_by_count_and_counts_every_outcome(server: int, tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    s = traffic.run(
        f"http://127.0.0.1:{server}/", rate=50, duration_s=5, max_requests=10, status_path=status
    )
    assert (s.sent, s.ok, s.failures) == (10, 10, 0)
    assert s.answers == {"vm=unit": 10}
    assert s.elapsed_s < 1.0
    assert json.loads(status.read_text())["ok"] == 10
    bad = traffic.run(f"http://127.0.0.1:{server}/bad", rate=50, duration_s=5, max_requests=3)
    assert (bad.http_error, bad.statuses) == (3, {"503": 3})


def test_a_run_is_bounded_by_duration_and_counts_refused_connections() -> None:
    s = traffic.run("http://127.0.0.1:9/", rate=20, duration_s=0.5, max_requests=1000)
    assert 8 <= s.sent <= 11
    assert s.connection_error == s.sent and s.ok == 0
    assert s.elapsed_s < 1.5
