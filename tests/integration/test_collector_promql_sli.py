"""The PromQL SLI collector against the lab's real Prometheus scraping a real exporter.

The exporter is an HTTP /metrics endpoint on the controller's second metrics port (which the
lab's Prometheus scrapes), serving a request counter that a thread advances at a known rate:
9 good (code 200) and 1 bad (code 500) requests every 0.1 s, a 90 % good ratio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Counter, start_http_server

from autoscaler.model import Collection, Scope, SignalName
from collectors.base import LastGood, guarded
from collectors.promql_sli import PromqlSliCollector, window_seconds, windowed
from lab import prometheus
from lab.layout import PORT_CONTROLLER_METRICS_2, LabLayout
from tests.integration import conftest_components as components

lab_layout = components.lab_layout
prometheus_stack = components.prometheus_stack

GOOD = 'sum(rate(lab_requests_total{code!~"5.."}[15s]))'
TOTAL = "sum(rate(lab_requests_total[15s]))"


@pytest.fixture(scope="module")
def request_exporter(lab_layout: LabLayout) -> Iterator[None]:
    registry = CollectorRegistry()
    requests = Counter("lab_requests", "lab requests", ["code"], registry=registry)
    server, thread = start_http_server(
        lab_layout.port(PORT_CONTROLLER_METRICS_2), addr="127.0.0.1", registry=registry
    )
    done = threading.Event()

    def serve_traffic() -> None:
        while not done.wait(0.1):
            requests.labels("200").inc(9)
            requests.labels("500").inc(1)

    traffic = threading.Thread(target=serve_traffic, daemon=True)
    traffic.start()
    yield
    done.set()
    traffic.join()
    server.shutdown()
    server.server_close()
    thread.join()


def _window(collection: Collection, metric: str) -> dict[str, float]:
    return {str(s.label("window")): s.value for s in collection.samples if s.metric == metric}


def _plain(collection: Collection, metric: str) -> float | None:
    found = [s.value for s in collection.samples if s.metric == metric and len(s.labels) == 2]
    return found[0] if found else None


def _complete(collection: Collection) -> bool:
    return not collection.stale and len(_window(collection, "sli_good_ratio")) == 2


def test_the_good_total_pair_is_evaluated_per_window(
    prometheus_stack: prometheus.PrometheusStack, request_exporter: None
) -> None:
    collector = PromqlSliCollector(
        PrometheusConnect(prometheus_stack.url), "web", GOOD, TOTAL, windows=("1h", "1m")
    )
    seen = components.eventually(
        lambda: collector.collect(time.time()), _complete, timeout=40, what="both windows read"
    )
    ratios = _window(seen, "sli_good_ratio")
    assert set(ratios) == {"1m", "1h"}
    assert all(ratio == pytest.approx(0.9, abs=0.02) for ratio in ratios.values()), ratios
    total_rate = _window(seen, "sli_total_rate")["1m"]
    assert total_rate > 0  # the new series' rate is still climbing into its windows here
    assert _window(seen, "sli_total_events")["1m"] == pytest.approx(total_rate * 60)
    # the plain pair is the shortest window's rates, in events per second
    assert _plain(seen, SignalName.SLI_TOTAL) == total_rate
    assert _plain(seen, SignalName.SLI_GOOD) == _window(seen, "sli_good_rate")["1m"]
    assert {s.label("scope") for s in seen.samples} == {Scope.BUSINESS}


def test_an_expression_with_a_window_placeholder_gets_the_window(
    prometheus_stack: prometheus.PrometheusStack, request_exporter: None
) -> None:
    good = 'sum(rate(lab_requests_total{code="200"}[$window]))'
    total = "sum(rate(lab_requests_total[$window]))"
    collector = PromqlSliCollector(
        PrometheusConnect(prometheus_stack.url), "web", good, total, windows=("10s",)
    )
    seen = components.eventually(  # 10 requests every 0.1 s: 100 per second once in the window
        lambda: collector.collect(time.time()),
        lambda c: abs(_window(c, "sli_total_rate").get("10s", 0.0) - 100.0) < 15.0,
        timeout=40,
        what="the 10s window at about 100 requests per second",
    )
    assert _window(seen, "sli_good_ratio")["10s"] == pytest.approx(0.9, abs=0.02)
    assert _window(seen, "sli_good_events")["10s"] == pytest.approx(
        _window(seen, "sli_good_rate")["10s"] * 10
    )


def test_a_series_prometheus_does_not_have_is_stale_not_zero(
    prometheus_stack: prometheus.PrometheusStack,
) -> None:
    collector = PromqlSliCollector(
        PrometheusConnect(prometheus_stack.url),
        "api",
        "sum(rate(no_such_requests_total[1m]))",
        "sum(rate(no_such_requests_total[1m]))",
        windows=("5m",),
    )
    seen = collector.collect(time.time())
    assert not seen.samples
    assert [(s.scope, s.target) for s in seen.stale] == [(Scope.BUSINESS, "api")]
    assert "no data" in seen.stale[0].reason


def test_prometheus_stopped_makes_the_business_sli_stale(
    lab_layout: LabLayout, prometheus_stack: prometheus.PrometheusStack, request_exporter: None
) -> None:
    collector = PromqlSliCollector(
        PrometheusConnect(prometheus_stack.url), "web", GOOD, TOTAL, windows=("1m",), timeout_s=2
    )
    last_good = LastGood()
    good = components.eventually(
        lambda: guarded(collector, time.time(), last_good),
        lambda c: not c.stale and bool(c.samples),
        timeout=40,
        what="the SLI read",
    )
    good_at = good.samples[0].timestamp
    prometheus.stop(lab_layout)
    try:
        down = guarded(collector, time.time(), last_good)
        assert not down.samples
        assert [(s.scope, s.target, s.last_good) for s in down.stale] == [
            (Scope.BUSINESS, "web", good_at)
        ]
    finally:
        prometheus.start(lab_layout)


@pytest.mark.parametrize("window", ["5", "0m", "1h30m", "5m;drop", "-1m", "m"])
def test_a_malformed_window_is_refused(window: str) -> None:
    with pytest.raises(ValueError, match="window"):
        window_seconds(window)
    with pytest.raises(ValueError, match="window"):
        windowed("sum(rate(x[1m]))", window)
