"""The node collector against the lab's real Prometheus, node-exporter and temperature feed."""

from __future__ import annotations

import os
import time

from prometheus_api_client import PrometheusConnect

from autoscaler.model import Collection, Scope, SignalName
from collectors.base import LastGood, guarded
from collectors.node import NodeCollector
from lab import prometheus, temperature
from lab.layout import PORT_NODE_EXPORTER, LabLayout
from lab.supervision import running_pid, stop_process
from tests.integration import conftest_components as components

lab_layout = components.lab_layout
prometheus_stack = components.prometheus_stack
rack_temperatures = components.rack_temperatures


def _collector(layout: LabLayout, stack: prometheus.PrometheusStack, **hosts: str) -> NodeCollector:
    exporter = f"127.0.0.1:{layout.port(PORT_NODE_EXPORTER)}"
    return NodeCollector(
        PrometheusConnect(stack.url),
        {"h0": exporter, "h1": exporter, **hosts},
        components.RACKS,
        timeout_s=2.0,
    )


def _values(collection: Collection, metric: str) -> dict[str, float]:
    return {str(s.label("target")): s.value for s in collection.samples if s.metric == metric}


def _fully_read(collection: Collection) -> bool:
    return not collection.stale and len(_values(collection, "host_cpu_utilisation")) == 2


def test_node_collector_reports_cpu_memory_and_rack_temperatures(
    lab_layout: LabLayout,
    prometheus_stack: prometheus.PrometheusStack,
    rack_temperatures: temperature.TemperatureFeeder,
) -> None:
    collector = _collector(lab_layout, prometheus_stack)
    seen = components.eventually(
        lambda: collector.collect(time.time()),
        _fully_read,
        timeout=30,
        what="every host and rack read",
    )
    cpu = _values(seen, "host_cpu_utilisation")
    assert set(cpu) == {"h0", "h1"} and all(0.0 <= v <= 1.0 for v in cpu.values())
    assert _values(seen, "host_cpus")["h0"] == os.cpu_count()
    total = _values(seen, "host_memory_total_bytes")["h0"]
    available = _values(seen, "host_memory_available_bytes")["h0"]
    assert 0 < available < total
    temps = _values(seen, SignalName.TEMPERATURE_CELSIUS)
    assert set(temps) == set(components.RACKS)
    assert all(0 < t < 120 for t in temps.values()), temps  # the trace's range
    racks = [s for s in seen.samples if s.metric == SignalName.TEMPERATURE_CELSIUS]
    assert all(s.label("scope") == Scope.RACK for s in racks)


def test_a_ramped_rack_reads_hot_while_the_others_follow_the_trace(
    lab_layout: LabLayout,
    prometheus_stack: prometheus.PrometheusStack,
    rack_temperatures: temperature.TemperatureFeeder,
) -> None:
    collector = _collector(lab_layout, prometheus_stack)
    temperature.ramp(lab_layout, "r2", delta_c=200.0, over_s=1.0)
    try:
        hot = components.eventually(
            lambda: _values(collector.collect(time.time()), SignalName.TEMPERATURE_CELSIUS),
            lambda temps: temps.get("r2", 0.0) > 150.0,
            timeout=20,
            what="rack r2 above 150 C",
        )
        assert hot["r1"] < 120.0
    finally:
        temperature.clear_ramps(lab_layout)


def test_a_host_whose_exporter_is_not_scraped_is_stale_not_zero(
    lab_layout: LabLayout,
    prometheus_stack: prometheus.PrometheusStack,
    rack_temperatures: temperature.TemperatureFeeder,
) -> None:
    collector = _collector(lab_layout, prometheus_stack, h9="127.0.0.1:1")
    seen = components.eventually(
        lambda: collector.collect(time.time()),
        lambda c: len(_values(c, "host_cpu_utilisation")) == 2,
        timeout=30,
        what="h0 and h1 read",
    )
    assert [(s.scope, s.target) for s in seen.stale] == [(Scope.HOST, "h9")]
    assert "127.0.0.1:1" in seen.stale[0].reason
    assert not [s for s in seen.samples if s.label("target") == "h9"]


def test_a_hung_prometheus_costs_one_timeout_and_marks_every_scope_stale(
    lab_layout: LabLayout,
    prometheus_stack: prometheus.PrometheusStack,
    rack_temperatures: temperature.TemperatureFeeder,
) -> None:
    collector = _collector(lab_layout, prometheus_stack)
    good = components.eventually(
        lambda: collector.collect(time.time()), _fully_read, timeout=30, what="fully read"
    )
    good_at = good.samples[0].timestamp
    hung, took = components.collect_while_hung(
        running_pid(lab_layout.prometheus_dir / "run", "prometheus"),
        lambda: collector.collect(time.time()),
    )
    assert took < 2.0 + 0.5  # one collect costs one timeout, never a hang
    assert not hung.samples
    assert {(s.scope, s.target) for s in hung.stale} == {
        (Scope.CLUSTER, "prometheus"),
        (Scope.HOST, "h0"),
        (Scope.HOST, "h1"),
        (Scope.RACK, "r1"),
        (Scope.RACK, "r2"),
    }
    assert all(s.last_good == good_at for s in hung.stale if s.scope != Scope.CLUSTER)


def test_prometheus_stopped_makes_every_scope_stale_with_its_last_good_time(
    lab_layout: LabLayout,
    prometheus_stack: prometheus.PrometheusStack,
    rack_temperatures: temperature.TemperatureFeeder,
) -> None:
    collector = _collector(lab_layout, prometheus_stack)
    last_good = LastGood()
    good = components.eventually(
        lambda: guarded(collector, time.time(), last_good),
        _fully_read,
        timeout=30,
        what="fully read",
    )
    good_at = good.samples[0].timestamp
    assert stop_process(lab_layout.prometheus_dir / "run", "prometheus")
    try:
        down = guarded(collector, time.time(), last_good)
        assert not down.samples, "no value may be reported while Prometheus is down"
        assert {s.target for s in down.stale} == {"prometheus", "h0", "h1", "r1", "r2"}
        assert all(s.last_good == good_at for s in down.stale if s.scope != Scope.CLUSTER)
        assert all("prometheus" in s.reason for s in down.stale)
    finally:
        prometheus.start(lab_layout)  # the stack is idempotent: restarts what is missing
    assert prometheus.status(lab_layout).running
    assert temperature.status(lab_layout).running, "the sensor feed outlives a stack restart"
    components.eventually(
        lambda: collector.collect(time.time()), _fully_read, timeout=30, what="read again"
    )
