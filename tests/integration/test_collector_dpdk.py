"""The DPDK collector against the lab's real dpdk-testpmd telemetry socket."""

from __future__ import annotations

import time

from autoscaler.model import Collection, Scope, SignalName
from collectors.base import LastGood, guarded
from collectors.dpdk import DpdkTelemetryCollector
from lab import dpdk
from lab.layout import LabLayout
from tests.integration import conftest_components as components

lab_layout = components.lab_layout
testpmd = components.testpmd


def _per_port(collection: Collection, metric: str) -> dict[str, float]:
    return {
        str(s.label("port")): s.value
        for s in collection.samples
        if s.metric == metric and s.label("port") is not None
    }


def _has_rates(collection: Collection) -> bool:
    return len(_per_port(collection, "dpdk_port_rx_packets_rate")) == 2


def _forwarding(collection: Collection) -> bool:
    """Rates on both ports, every rx and tx rate above zero."""
    rates = [
        *_per_port(collection, "dpdk_port_rx_packets_rate").values(),
        *_per_port(collection, "dpdk_port_tx_packets_rate").values(),
    ]
    return len(rates) == 4 and min(rates) > 0


def test_forwarding_testpmd_gives_packet_rates_and_drop_and_error_rates_per_port(
    testpmd: dpdk.Testpmd,
) -> None:
    collector = DpdkTelemetryCollector("h0", testpmd.telemetry_socket)
    first = collector.collect(time.time())
    assert not first.stale
    assert not _has_rates(first), "a first reading has counters, never invented rates"
    assert set(_per_port(first, "dpdk_port_ipackets_total")) == {"0", "1"}
    seen = components.eventually(
        lambda: collector.collect(time.time()), _forwarding, timeout=10, what="traffic"
    )
    drops = _per_port(seen, "dpdk_port_rx_drop_rate")
    errors = _per_port(seen, "dpdk_port_rx_errors_rate")
    assert set(drops) == set(errors) == {"0", "1"}
    assert all(v >= 0 for v in [*drops.values(), *errors.values()])
    host_wide = {
        s.metric: s.value for s in seen.samples if s.label("port") is None and "rate" in s.metric
    }
    assert set(host_wide) == {
        "dpdk_rx_packets_rate",
        "dpdk_tx_packets_rate",
        SignalName.DPDK_RX_DROP_RATE,
        SignalName.DPDK_RX_ERROR_RATE,
    }
    assert host_wide["dpdk_rx_packets_rate"] == sum(
        _per_port(seen, "dpdk_port_rx_packets_rate").values()
    )
    missed_xstats = [
        s
        for s in seen.samples
        if s.metric == "dpdk_port_xstat_rate" and s.label("xstat") == "rx_missed_errors"
    ]
    assert len(missed_xstats) == 2
    assert all(s.label("scope") == Scope.HOST and s.label("target") == "h0" for s in seen.samples)


def test_stopped_forwarding_reads_as_a_real_zero_rate(
    lab_layout: LabLayout, testpmd: dpdk.Testpmd
) -> None:
    collector = DpdkTelemetryCollector("h0", testpmd.telemetry_socket)
    dpdk.command(lab_layout, "stop")
    try:
        idle = components.eventually(
            lambda: collector.collect(time.time()),
            lambda c: _has_rates(c)
            and set(_per_port(c, "dpdk_port_rx_packets_rate").values()) == {0.0},
            timeout=15,
            what="zero rx rate while forwarding is stopped",
        )
        assert not idle.stale
    finally:
        dpdk.command(lab_layout, "start")
    components.eventually(
        lambda: collector.collect(time.time()), _forwarding, timeout=15, what="forwarding again"
    )


def test_testpmd_killed_is_stale_not_zero_and_a_restart_gives_no_bogus_rate(
    lab_layout: LabLayout, testpmd: dpdk.Testpmd
) -> None:
    collector = DpdkTelemetryCollector("h0", testpmd.telemetry_socket, timeout_s=1.0)
    last_good = LastGood()
    good = components.eventually(
        lambda: guarded(collector, time.time(), last_good), _has_rates, timeout=10, what="rates"
    )
    good_at = good.samples[0].timestamp
    dpdk.kill(lab_layout)
    try:
        began = time.monotonic()
        dead = guarded(collector, time.time(), last_good)
        assert time.monotonic() - began < 1.5
        assert not dead.samples, "a dead process reports nothing, least of all zero"
        assert [(s.scope, s.target, s.last_good) for s in dead.stale] == [
            (Scope.HOST, "h0", good_at)
        ]
        assert "dpdk telemetry" in dead.stale[0].reason
    finally:
        restarted = dpdk.start(lab_layout)
    assert restarted.pid != testpmd.pid
    after = collector.collect(time.time())
    assert not after.stale
    assert not _has_rates(after), "counters restarted from zero: no rate until the next reading"
